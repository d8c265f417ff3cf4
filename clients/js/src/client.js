// The /chat event protocol and /v1/models over fetch: browsers and Node 18+ alike.

import {
  ConnectionError,
  ProtocolError,
  StreamError,
  TokenRelayError,
  abortError,
  errorFromResponse,
  isAbortError,
} from './errors.js';
import { SSEParser } from './sse.js';

/**
 * @typedef {object} Message
 * @property {string} role "system", "user" or "assistant"
 * @property {string} content
 */

/**
 * Extra body fields, passed through to the model. The gateway refuses unknown keys with 400.
 * @typedef {{temperature?: number, top_p?: number, max_tokens?: number,
 *   stop?: string | string[], seed?: number} & Record<string, unknown>} ChatParams
 */

/**
 * @typedef {object} ConnectionOptions
 * @property {string} [url] the gateway's base URL, e.g. "http://127.0.0.1:8000" (a trailing
 *   slash is fine); default "" = the page's own origin, for pages the gateway serves
 * @property {string} [apiKey] sent as `Authorization: Bearer <apiKey>`
 * @property {AbortSignal} [signal] aborting rejects with the signal's reason (an AbortError
 *   by default) and closes the connection
 * @property {typeof globalThis.fetch} [fetch] the fetch to use; default globalThis.fetch
 */

/**
 * @typedef {object} ChatRequestOptions
 * @property {Message[]} messages the conversation, at least one message
 * @property {string} [model] a model id from listModels(); default: the gateway's default model
 * @property {ChatParams} [params] temperature, top_p, max_tokens, stop, seed
 * @property {string} [requestId] sent as `X-Request-ID` (1–128 of `A-Za-z0-9._:-`, else the
 *   gateway makes its own); the gateway logs it and sends it upstream
 * @property {number} [maxEventBytes] the largest event accepted, default 1 MiB
 * @property {(response: Response) => void} [onResponse] called with the 200 response before
 *   the first event, e.g. to read its `X-Request-ID` header
 */

/** @typedef {ConnectionOptions & ChatRequestOptions} ChatOptions */

/**
 * @typedef {object} DeltaEvent a piece of the answer's text
 * @property {'delta'} type
 * @property {string} text
 */

/**
 * @typedef {object} Usage token counts of the whole exchange
 * @property {number} prompt_tokens
 * @property {number} completion_tokens
 * @property {number} total_tokens
 * @property {string} source "upstream" (the provider's counts), "estimated" (the gateway's, with tiktoken) or
 *   "tokenizer" (the gateway's, with the model's own tokenizer: the local model)
 */

/** @typedef {{type: 'usage'} & Usage} UsageEvent */

/**
 * @typedef {object} DoneEvent the answer is complete; the last event of a stream
 * @property {'done'} type
 * @property {string | null} finish_reason e.g. "stop", "length"
 */

/** @typedef {DeltaEvent | UsageEvent | DoneEvent} ChatEvent */

/**
 * @typedef {object} ChatResult
 * @property {string} text all the deltas, joined
 * @property {Usage | null} usage null when the gateway sent no usage event
 * @property {string | null} finishReason
 * @property {string | null} requestId the response's `X-Request-ID`
 * @property {number | null} timeToFirstTokenMs from the start of the request to the first
 *   delta; null when there was none
 * @property {number} durationMs from the start of the request to `done`
 */

/**
 * @typedef {object} StreamChatCallbacks
 * @property {(text: string, event: DeltaEvent) => void} [onDelta]
 * @property {(usage: UsageEvent) => void} [onUsage]
 * @property {(result: ChatResult) => void} [onDone]
 * @property {(error: unknown) => void} [onError] called with every failure (aborts included)
 *   before streamChat rejects with it
 */

/** @typedef {ChatOptions & StreamChatCallbacks} StreamChatOptions */

/**
 * Streams one answer as an async iterator of events: `delta`s, then `usage`, then `done`.
 *
 * Throws APIError (a subclass per kind) when the gateway refuses the request, StreamError on
 * an `error` event, ConnectionError when the connection fails or the stream ends early, and
 * the signal's reason (AbortError) when aborted. Keep-alives and event types newer than this
 * client are skipped. Leaving the loop early (`break`, `return`, an exception) cancels the
 * response body, which closes the connection: that is how the gateway learns the client left
 * and stops the upstream call.
 *
 * @param {ChatOptions} options
 * @returns {AsyncGenerator<ChatEvent, void, undefined>}
 */
export async function* chatEvents(options) {
  yield* openEvents(prepareChat(options), options.onResponse);
}

/**
 * Streams one answer through callbacks and resolves to the whole of it.
 *
 * On failure calls `onError(err)`, then rejects with the same error (an exception thrown by
 * onError itself rejects instead). An exception thrown by onDelta or onUsage stops the stream
 * and is handled the same way; one thrown by onDone rejects without calling onError.
 * Invalid options reject with a TypeError before any request, without calling onError.
 *
 * @param {StreamChatOptions} options
 * @returns {Promise<ChatResult>}
 */
export async function streamChat(options) {
  // Validated before the try: a programming error is not a failure to report through onError.
  const request = prepareChat(options);
  const { onDelta, onUsage, onDone, onError, onResponse } = options;
  checkCallbacks({ onDelta, onUsage, onDone, onError });
  const started = now();
  /** @type {string[]} */
  const parts = [];
  /** @type {Usage | null} */
  let usage = null;
  /** @type {string | null} */
  let finishReason = null;
  /** @type {string | null} */
  let requestId = options.requestId ?? null;
  /** @type {number | null} */
  let timeToFirstTokenMs = null;
  /** @type {ChatResult} */
  let result;
  try {
    const events = openEvents(request, (response) => {
      requestId = response.headers.get('x-request-id') ?? requestId;
      onResponse?.(response);
    });
    for await (const event of events) {
      switch (event.type) {
        case 'delta':
          timeToFirstTokenMs ??= now() - started;
          parts.push(event.text);
          onDelta?.(event.text, event);
          break;
        case 'usage': {
          const { type: _type, ...counts } = event;
          usage = counts;
          onUsage?.(event);
          break;
        }
        case 'done':
          finishReason = event.finish_reason ?? null;
          break;
      }
    }
    result = {
      text: parts.join(''),
      usage,
      finishReason,
      requestId,
      timeToFirstTokenMs,
      durationMs: now() - started,
    };
  } catch (err) {
    onError?.(err);
    throw err;
  }
  onDone?.(result);
  return result;
}

/**
 * The ids of the models the gateway serves (`GET /v1/models`), e.g. `["tokenrelay-sim"]`.
 * @param {ConnectionOptions} [options]
 * @returns {Promise<string[]>}
 */
export async function listModels(options = {}) {
  const request = prepareConnection(options, '/v1/models');
  const response = await send(request);
  if (!response.ok) throw await apiError(response, request.signal);
  const requestId = response.headers.get('x-request-id');
  const text = await readText(response, request.signal);
  /** @type {unknown} */
  let json;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ProtocolError(`The model list is not JSON: ${clip(text)}`, { cause: err, requestId });
  }
  if (!isObject(json) || !Array.isArray(json.data)) {
    throw new ProtocolError(`The model list has no "data" array: ${clip(text)}`, { requestId });
  }
  return json.data.flatMap((model) => (isObject(model) && typeof model.id === 'string' ? [model.id] : []));
}

// --- requests ---------------------------------------------------------------------------------

/**
 * @typedef {object} PreparedRequest
 * @property {string} url
 * @property {'GET' | 'POST'} method
 * @property {string} accept
 * @property {string | undefined} body
 * @property {string | undefined} apiKey
 * @property {string | undefined} requestId
 * @property {AbortSignal | undefined} signal
 * @property {typeof globalThis.fetch} fetch
 * @property {number | undefined} maxEventBytes
 */

/**
 * Validates chat options and builds the request, so that mistakes fail before any I/O.
 * @param {ChatOptions} options
 * @returns {PreparedRequest}
 */
function prepareChat(options) {
  const request = prepareConnection(options, '/chat');
  const { messages, model, params, requestId, maxEventBytes, onResponse } = options;
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new TypeError('options.messages must be a non-empty array of {role, content}');
  }
  messages.forEach((message, i) => {
    if (!isObject(message) || typeof message.role !== 'string') {
      throw new TypeError(`options.messages[${i}] must be an object with a string "role"`);
    }
  });
  checkOptional('model', model, 'string');
  checkOptional('requestId', requestId, 'string');
  checkOptional('maxEventBytes', maxEventBytes, 'number');
  if (maxEventBytes !== undefined && !(maxEventBytes > 0)) throw new TypeError('options.maxEventBytes must be positive');
  checkOptional('onResponse', onResponse, 'function');
  if (params !== undefined && !isObject(params)) throw new TypeError('options.params must be an object');
  // The explicit options win over same-named keys in params.
  const body = JSON.stringify({ ...params, model, messages });
  return { ...request, method: 'POST', accept: 'text/event-stream', body, requestId, maxEventBytes };
}

/**
 * @param {ConnectionOptions} options
 * @param {string} path
 * @returns {PreparedRequest}
 */
function prepareConnection(options, path) {
  if (!isObject(options)) throw new TypeError('options must be an object');
  const { url = '', apiKey, signal, fetch = globalThis.fetch } = options;
  if (typeof url !== 'string') throw new TypeError('options.url must be a string');
  if (url === '' && typeof location === 'undefined') {
    throw new TypeError('options.url is required outside a browser page (it defaults to the page origin)');
  }
  checkOptional('apiKey', apiKey, 'string');
  if (signal !== undefined && !(isObject(signal) && typeof signal.aborted === 'boolean')) {
    throw new TypeError('options.signal must be an AbortSignal');
  }
  if (typeof fetch !== 'function') {
    throw new TypeError('No fetch implementation: pass options.fetch');
  }
  return {
    url: `${url.replace(/\/+$/, '')}${path}`,
    method: 'GET',
    accept: 'application/json',
    body: undefined,
    apiKey,
    requestId: undefined,
    signal,
    fetch,
    maxEventBytes: undefined,
  };
}

/**
 * @param {PreparedRequest} request
 * @returns {Promise<Response>}
 */
async function send(request) {
  const { url, method, accept, body, apiKey, requestId, signal } = request;
  if (signal?.aborted) throw abortError(signal);
  /** @type {Record<string, string>} */
  const headers = { Accept: accept };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  if (requestId) headers['X-Request-ID'] = requestId;
  // Called as a plain function: browsers refuse a fetch called as a method of another object.
  const fetchImpl = request.fetch;
  try {
    return await fetchImpl(url, { method, headers, body, signal });
  } catch (err) {
    if (signal?.aborted) throw abortError(signal);
    if (isAbortError(err) || err instanceof TokenRelayError) throw err;
    throw new ConnectionError('connection_failed', `Could not reach ${url}: ${describe(err)}`, { cause: err });
  }
}

/**
 * The typed error for a non-2xx response (its body is read first).
 * @param {Response} response
 * @param {AbortSignal | undefined} signal
 */
async function apiError(response, signal) {
  let text = '';
  try {
    text = await readText(response, signal);
  } catch (err) {
    if (isAbortError(err) || signal?.aborted) throw err;
    // The status still says what went wrong; a body cut short adds nothing.
  }
  return errorFromResponse(response.status, text, response.headers);
}

/**
 * @param {Response} response
 * @param {AbortSignal | undefined} signal
 * @returns {Promise<string>}
 */
async function readText(response, signal) {
  try {
    return await response.text();
  } catch (err) {
    if (signal?.aborted) throw abortError(signal);
    throw new ConnectionError('stream_interrupted', `The response broke off: ${describe(err)}`, {
      cause: err,
      requestId: response.headers.get('x-request-id'),
    });
  }
}

/**
 * A 200 that is not an event stream (a captive portal's or proxy's page) is not the gateway.
 * No content type at all is let through, for minimal test doubles of fetch.
 * @param {Response} response
 * @param {string | null} requestId
 */
function checkContentType(response, requestId) {
  const type = response.headers.get('content-type');
  if (type !== null && !type.toLowerCase().includes('text/event-stream')) {
    throw new ProtocolError(`Expected an event stream, got ${type}`, { requestId });
  }
}

// --- the event stream -------------------------------------------------------------------------

/**
 * @param {PreparedRequest} request
 * @param {((response: Response) => void) | undefined} onResponse
 * @returns {AsyncGenerator<ChatEvent, void, undefined>}
 */
async function* openEvents(request, onResponse) {
  const response = await send(request);
  if (!response.ok) throw await apiError(response, request.signal);
  const requestId = response.headers.get('x-request-id');
  try {
    checkContentType(response, requestId);
    onResponse?.(response);
  } catch (err) {
    cancel(response.body);
    throw err;
  }
  yield* readEvents(response, request, requestId);
}

/**
 * @param {Response} response
 * @param {PreparedRequest} request
 * @param {string | null} requestId
 * @returns {AsyncGenerator<ChatEvent, void, undefined>}
 */
async function* readEvents(response, { signal, maxEventBytes }, requestId) {
  if (!response.body) throw new ConnectionError('stream_interrupted', 'The response has no body', { requestId });
  const reader = response.body.getReader();
  const parser = new SSEParser({ maxEventBytes });
  let ended = false;
  let answered = false;
  // Also while the consumer is busy between two events: an abort closes the connection at once.
  const onAbort = () => {
    reader.cancel().catch(() => {});
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for (;;) {
      /** @type {ReadableStreamReadResult<Uint8Array>} */
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (signal?.aborted) throw abortError(signal);
        throw new ConnectionError('stream_interrupted', `The stream broke off: ${describe(err)}`, {
          cause: err,
          requestId,
        });
      }
      if (signal?.aborted) throw abortError(signal);
      if (chunk.done) ended = true;
      let messages;
      try {
        messages = chunk.done ? parser.end() : parser.feed(chunk.value);
      } catch (err) {
        if (err instanceof ConnectionError) err.requestId = requestId;
        throw err;
      }
      for (const message of messages) {
        const event = answered ? null : toEvent(message, requestId);
        if (event === null) continue;
        yield event;
        // The consumer may have aborted while it handled the event: yield no more of this chunk.
        if (signal?.aborted) throw abortError(signal);
        // `done` is the last event; the response ends right after it. Reading that end lets the
        // connection be reused and the gateway see an orderly close, not a client that left.
        if (event.type === 'done') answered = true;
      }
      if (chunk.done && answered) return;
      if (chunk.done) {
        throw new ConnectionError('stream_interrupted', 'The stream ended before the answer was complete', {
          requestId,
        });
      }
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    // Left early (break, abort, error, or done with bytes still unread): close the connection.
    if (!ended) reader.cancel().catch(() => {});
  }
}

/**
 * The protocol event in an SSE message; null for what this client skips.
 * @param {import('./sse.js').SSEMessage} message
 * @param {string | null} requestId
 * @returns {ChatEvent | null}
 */
function toEvent(message, requestId) {
  // The /chat protocol sends unnamed events only; named ones are for other consumers.
  if (message.event !== 'message') return null;
  /** @type {unknown} */
  let value;
  try {
    value = JSON.parse(message.data);
  } catch (err) {
    throw new ProtocolError(`Unreadable event: ${clip(message.data)}`, { cause: err, requestId });
  }
  if (!isObject(value) || typeof value.type !== 'string') {
    throw new ProtocolError(`Event without a type: ${clip(message.data)}`, { requestId });
  }
  switch (value.type) {
    case 'delta':
      if (typeof value.text !== 'string') {
        throw new ProtocolError(`Delta without text: ${clip(message.data)}`, { requestId });
      }
      return /** @type {DeltaEvent} */ (value);
    case 'usage':
      return /** @type {UsageEvent} */ (value);
    case 'done':
      return /** @type {DoneEvent} */ (value);
    case 'error': {
      const code = typeof value.code === 'string' && value.code ? value.code : 'stream_error';
      const text = typeof value.message === 'string' && value.message ? value.message : `The stream failed: ${code}`;
      throw new StreamError(code, text, requestId);
    }
    default:
      return null; // a type newer than this client: skipped, so old clients keep working
  }
}

// --- small helpers ----------------------------------------------------------------------------

/** @param {ReadableStream<Uint8Array> | null} body */
function cancel(body) {
  body?.cancel().catch(() => {});
}

/** @param {Record<string, unknown>} callbacks */
function checkCallbacks(callbacks) {
  for (const [name, value] of Object.entries(callbacks)) checkOptional(name, value, 'function');
}

/**
 * @param {string} name
 * @param {unknown} value
 * @param {'string' | 'number' | 'function'} type
 */
function checkOptional(name, value, type) {
  if (value !== undefined && typeof value !== type) throw new TypeError(`options.${name} must be a ${type}`);
}

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * A failure's message with its cause's code: Node's fetch says only "fetch failed" and keeps
 * the reason ("ECONNREFUSED") in `cause`.
 * @param {unknown} err
 * @returns {string}
 */
function describe(err) {
  if (!(err instanceof Error)) return String(err);
  const cause = /** @type {{code?: unknown, message?: unknown} | undefined} */ (err.cause);
  const detail = cause?.code ?? cause?.message;
  return detail ? `${err.message} (${String(detail)})` : err.message;
}

/** @param {string} text */
function clip(text) {
  return text.length > 100 ? `${text.slice(0, 100)}…` : text;
}

function now() {
  return performance.now();
}
