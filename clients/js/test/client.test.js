import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { after, afterEach, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  APIError,
  AuthenticationError,
  BadRequestError,
  ConnectionError,
  ProtocolError,
  RateLimitError,
  StreamError,
  TokenRelayError,
  UpstreamError,
  chatEvents,
  isAbortError,
  listModels,
  streamChat,
} from '../src/index.js';

const MESSAGES = [{ role: 'user', content: 'Hello!' }];
const REQUEST_ID = 'req-test-1';

// --- a scripted gateway -------------------------------------------------------------------------

/**
 * @typedef {object} Exchange one request the server received
 * @property {http.IncomingMessage} req
 * @property {http.ServerResponse} res
 * @property {string} body
 * @property {Promise<boolean>} closed resolves when the response closes: true if it was
 *   finished, false if the client went away first
 */

/** @type {(exchange: Exchange) => void | Promise<void>} */
let script = () => {
  throw new Error('no script');
};
/** @type {Exchange[]} */
let exchanges = [];
let base = '';
const server = http.createServer((req, res) => {
  let finished = false;
  res.on('finish', () => {
    finished = true;
  });
  /** @type {Exchange} */
  const exchange = {
    req,
    res,
    body: '',
    closed: new Promise((resolve) => res.on('close', () => resolve(finished))),
  };
  exchanges.push(exchange);
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', async () => {
    exchange.body = Buffer.concat(chunks).toString('utf8');
    try {
      await script(exchange);
    } catch {
      res.destroy(); // a script step after the client left
    }
  });
});

before(async () => {
  await new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(undefined)));
  const address = /** @type {import('node:net').AddressInfo} */ (server.address());
  base = `http://127.0.0.1:${address.port}`;
});
afterEach(() => {
  exchanges = [];
});
after(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

/** @param {object} value */
const event = (id, value) => `id: ${id}\ndata: ${JSON.stringify(value)}\n\n`;

const HELLO = [
  event(1, { type: 'delta', text: 'Hel' }),
  event(2, { type: 'delta', text: 'lo, wörld 🚀\n"quoted" 日本' }),
  event(3, { type: 'usage', prompt_tokens: 12, completion_tokens: 30, total_tokens: 42, source: 'upstream' }),
  event(4, { type: 'done', finish_reason: 'stop' }),
].join('');

/** Bytes split at the given offsets, which may fall inside a UTF-8 character. */
function splitBytes(text, ...offsets) {
  const buffer = Buffer.from(text, 'utf8');
  const bounds = [0, ...offsets, buffer.length];
  return bounds.slice(1).map((end, i) => buffer.subarray(bounds[i], end));
}

/** Offsets that cut every multi-byte character of the text in its middle. */
function cutsInsideCharacters(text) {
  const offsets = [];
  let position = 0;
  for (const char of text) {
    const size = Buffer.byteLength(char);
    if (size > 1) offsets.push(position + 1);
    position += size;
  }
  return offsets;
}

/**
 * Answers with an event stream written in pieces, a few milliseconds apart.
 * @param {http.ServerResponse} res
 * @param {Array<string | Buffer>} pieces
 * @param {{end?: boolean, delay?: number, headers?: Record<string, string>}} [options]
 */
async function stream(res, pieces, { end = true, delay = 2, headers = {} } = {}) {
  res.writeHead(200, {
    'Content-Type': 'text/event-stream; charset=utf-8',
    'Cache-Control': 'no-cache',
    'X-Request-ID': REQUEST_ID,
    ...headers,
  });
  res.flushHeaders();
  for (const piece of pieces) {
    if (res.destroyed) return;
    res.write(piece);
    await sleep(delay);
  }
  if (end) res.end();
}

/**
 * @param {http.ServerResponse} res
 * @param {number} status
 * @param {string | object} body
 * @param {Record<string, string>} [headers]
 */
function reply(res, status, body, headers = {}) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': typeof body === 'string' ? 'text/html' : 'application/json',
    'X-Request-ID': REQUEST_ID,
    ...headers,
  });
  res.end(text);
}

/**
 * @param {string} message
 * @param {string} type
 * @param {string} code
 * @param {string | null} [param]
 */
const errorBody = (message, type, code, param = null) => ({ error: { message, type, param, code } });

/**
 * Resolves with whether the response finished, or fails if it stays open for 2 s.
 * @param {Exchange} exchange
 */
async function closedWithin2s(exchange) {
  const timeout = sleep(2000).then(() => {
    throw new Error('the server did not see the connection close within 2 s');
  });
  return Promise.race([exchange.closed, timeout]);
}

/** @param {AsyncIterable<unknown>} iterable */
async function collect(iterable) {
  const items = [];
  for await (const item of iterable) items.push(item);
  return items;
}

// --- tests --------------------------------------------------------------------------------------

describe('streaming', () => {
  test('chatEvents yields deltas, usage and done in order, across splits inside characters', async () => {
    script = ({ res }) => stream(res, splitBytes(HELLO, ...cutsInsideCharacters(HELLO)));
    const events = await collect(chatEvents({ url: base, messages: MESSAGES }));
    assert.deepEqual(events, [
      { type: 'delta', text: 'Hel' },
      { type: 'delta', text: 'lo, wörld 🚀\n"quoted" 日本' },
      { type: 'usage', prompt_tokens: 12, completion_tokens: 30, total_tokens: 42, source: 'upstream' },
      { type: 'done', finish_reason: 'stop' },
    ]);
  });

  test('streamChat calls back in order and resolves to the result', async () => {
    script = ({ res }) => stream(res, splitBytes(HELLO, 5, 40, 41, 42, 90));
    const calls = [];
    const result = await streamChat({
      url: base,
      messages: MESSAGES,
      onDelta: (text, delta) => calls.push(['delta', text, delta.type]),
      onUsage: (usage) => calls.push(['usage', usage.total_tokens]),
      onDone: (done) => calls.push(['done', done.text]),
      onError: (err) => calls.push(['error', err]),
    });
    const text = 'Hello, wörld 🚀\n"quoted" 日本';
    assert.deepEqual(calls, [
      ['delta', 'Hel', 'delta'],
      ['delta', 'lo, wörld 🚀\n"quoted" 日本', 'delta'],
      ['usage', 42],
      ['done', text],
    ]);
    assert.equal(result.text, text);
    assert.deepEqual(result.usage, { prompt_tokens: 12, completion_tokens: 30, total_tokens: 42, source: 'upstream' });
    assert.equal(result.finishReason, 'stop');
    assert.equal(result.requestId, REQUEST_ID);
    assert.equal(typeof result.timeToFirstTokenMs, 'number');
    assert.ok(result.timeToFirstTokenMs >= 0);
    assert.ok(result.durationMs >= result.timeToFirstTokenMs);
  });

  test('the recorded fixture, written in small pieces', async () => {
    const recorded = readFileSync(new URL('./fixtures/recorded.sse', import.meta.url));
    const pieces = [];
    for (let offset = 0; offset < recorded.length; offset += 7) pieces.push(recorded.subarray(offset, offset + 7));
    script = ({ res }) => stream(res, pieces, { delay: 0 });
    const result = await streamChat({ url: base, messages: MESSAGES });
    assert.equal(result.text, 'Hello, wörld — café 日本語のテキスト 🚀🎉 emoji\nline two "quoted"\nCRLF ✓ 👍🏽!');
    assert.equal(result.usage?.total_tokens, 42);
    assert.equal(result.finishReason, 'stop');
  });

  test('sends the request: path, headers and body', async () => {
    script = ({ res }) => stream(res, [HELLO]);
    await streamChat({
      url: `${base}/`,
      apiKey: 'sk-test',
      requestId: 'my-request-42',
      model: 'tokenrelay-sim',
      messages: MESSAGES,
      params: { temperature: 0.5, max_tokens: 20, stop: ['\n'] },
    });
    const [{ req, body }] = exchanges;
    assert.equal(req.method, 'POST');
    assert.equal(req.url, '/chat');
    assert.equal(req.headers.authorization, 'Bearer sk-test');
    assert.equal(req.headers['x-request-id'], 'my-request-42');
    assert.equal(req.headers['content-type'], 'application/json');
    assert.equal(req.headers.accept, 'text/event-stream');
    assert.deepEqual(JSON.parse(body), {
      model: 'tokenrelay-sim',
      messages: MESSAGES,
      temperature: 0.5,
      max_tokens: 20,
      stop: ['\n'],
    });
  });

  test('without apiKey, model or requestId those are not sent', async () => {
    script = ({ res }) => stream(res, [HELLO]);
    await streamChat({ url: base, messages: MESSAGES });
    const [{ req, body }] = exchanges;
    assert.equal(req.headers.authorization, undefined);
    assert.equal(req.headers['x-request-id'], undefined);
    assert.deepEqual(JSON.parse(body), { messages: MESSAGES });
  });

  test('pings, unknown event types and named events are skipped', async () => {
    script = ({ res }) =>
      stream(res, [
        ': ping\n\n',
        event(1, { type: 'delta', text: 'a' }),
        event(2, { type: 'reasoning', text: 'not for this client' }),
        'event: debug\ndata: not json at all\n\n',
        ': ping\n\n',
        event(3, { type: 'delta', text: 'b' }),
        event(4, { type: 'done', finish_reason: 'length' }),
      ]);
    const events = await collect(chatEvents({ url: base, messages: MESSAGES }));
    assert.deepEqual(events, [
      { type: 'delta', text: 'a' },
      { type: 'delta', text: 'b' },
      { type: 'done', finish_reason: 'length' },
    ]);
  });

  test('a stream without usage resolves with usage null', async () => {
    script = ({ res }) => stream(res, [event(1, { type: 'done', finish_reason: 'stop' })]);
    const result = await streamChat({ url: base, messages: MESSAGES });
    assert.equal(result.text, '');
    assert.equal(result.usage, null);
    assert.equal(result.timeToFirstTokenMs, null);
  });

  test('onResponse sees the response before the first event', async () => {
    script = ({ res }) => stream(res, [HELLO]);
    let seen = null;
    const events = await collect(
      chatEvents({ url: base, messages: MESSAGES, onResponse: (r) => (seen = r.headers.get('x-request-id')) }),
    );
    assert.equal(seen, REQUEST_ID);
    assert.equal(events.length, 4);
  });

  test('an injected fetch is used', async () => {
    let calls = 0;
    /** @type {typeof fetch} */
    const countingFetch = (input, init) => {
      calls += 1;
      return fetch(input, init);
    };
    script = ({ res }) => stream(res, [HELLO]);
    await streamChat({ url: base, messages: MESSAGES, fetch: countingFetch });
    assert.equal(calls, 1);
  });
});

describe('errors before the stream', () => {
  /**
   * @param {number} status
   * @param {string | object} body
   * @param {Record<string, string>} [headers]
   */
  async function failWith(status, body, headers) {
    script = ({ res }) => reply(res, status, body, headers);
    const errors = [];
    const err = await streamChat({ url: base, messages: MESSAGES, onError: (e) => errors.push(e) }).then(
      () => assert.fail('expected a rejection'),
      (e) => e,
    );
    assert.deepEqual(errors, [err], 'onError is called with the rejection');
    assert.ok(err instanceof APIError && err instanceof TokenRelayError && err instanceof Error);
    assert.equal(err.status, status);
    assert.equal(err.requestId, REQUEST_ID);
    return err;
  }

  test('400 invalid request', async () => {
    const err = await failWith(400, errorBody('messages: field required', 'invalid_request_error', 'invalid_request_error', 'messages'));
    assert.ok(err instanceof BadRequestError);
    assert.equal(err.name, 'BadRequestError');
    assert.equal(err.code, 'invalid_request_error');
    assert.equal(err.type, 'invalid_request_error');
    assert.equal(err.param, 'messages');
    assert.equal(err.message, 'messages: field required');
    assert.equal(err.retryAfter, null);
  });

  test('404 unknown model', async () => {
    const err = await failWith(404, errorBody("The model 'x' does not exist", 'invalid_request_error', 'model_not_found', 'model'));
    assert.ok(err instanceof BadRequestError);
    assert.equal(err.code, 'model_not_found');
  });

  test('429 with Retry-After', async () => {
    const body = errorBody('Rate limited upstream', 'rate_limit_error', 'upstream_rate_limited');
    const err = await failWith(429, body, { 'Retry-After': '7' });
    assert.ok(err instanceof RateLimitError);
    assert.equal(err.code, 'upstream_rate_limited');
    assert.equal(err.retryAfter, 7);
    assert.equal(err.body, JSON.stringify(body));
  });

  test('429 over budget', async () => {
    const err = await failWith(429, errorBody('Budget exhausted', 'rate_limit_error', 'budget_exceeded'), { 'Retry-After': '3600' });
    assert.ok(err instanceof RateLimitError);
    assert.equal(err.code, 'budget_exceeded');
    assert.equal(err.retryAfter, 3600);
  });

  test('401 and 403', async () => {
    for (const status of [401, 403]) {
      const err = await failWith(status, errorBody('Invalid API key', 'authentication_error', 'invalid_api_key'));
      assert.ok(err instanceof AuthenticationError);
      assert.equal(err.code, 'invalid_api_key');
    }
  });

  test('502 JSON', async () => {
    const err = await failWith(502, errorBody('Upstream unavailable: connection refused', 'api_error', 'upstream_unavailable'));
    assert.ok(err instanceof UpstreamError);
    assert.equal(err.code, 'upstream_unavailable');
    assert.equal(err.message, 'Upstream unavailable: connection refused');
  });

  test('502 HTML page from a proxy', async () => {
    const html = '<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>';
    const err = await failWith(502, html);
    assert.ok(err instanceof UpstreamError);
    assert.equal(err.code, 'http_error');
    assert.equal(err.type, null);
    assert.equal(err.message, 'HTTP 502: 502 Bad Gateway 502 Bad Gateway nginx');
    assert.equal(err.body, html);
  });

  test('chatEvents throws the same errors', async () => {
    script = ({ res }) => reply(res, 503, errorBody('Shutting down', 'api_error', 'shutting_down'));
    await assert.rejects(collect(chatEvents({ url: base, messages: MESSAGES })), (err) => {
      assert.ok(err instanceof UpstreamError);
      assert.equal(err.code, 'shutting_down');
      return true;
    });
  });

  test('a 200 that is not an event stream is a ProtocolError', async () => {
    script = ({ res }) => reply(res, 200, '<html>Please log in to the Wi-Fi</html>');
    await assert.rejects(streamChat({ url: base, messages: MESSAGES }), (err) => {
      assert.ok(err instanceof ProtocolError && err instanceof ConnectionError);
      assert.equal(err.code, 'protocol_error');
      return true;
    });
  });

  test('connection refused is a ConnectionError', async () => {
    const closed = http.createServer();
    await new Promise((resolve) => closed.listen(0, '127.0.0.1', () => resolve(undefined)));
    const { port } = /** @type {import('node:net').AddressInfo} */ (closed.address());
    await new Promise((resolve) => closed.close(resolve));
    const errors = [];
    await assert.rejects(
      streamChat({ url: `http://127.0.0.1:${port}`, messages: MESSAGES, onError: (e) => errors.push(e) }),
      (err) => {
        assert.ok(err instanceof ConnectionError);
        assert.equal(err.code, 'connection_failed');
        assert.match(err.message, /ECONNREFUSED/);
        return true;
      },
    );
    assert.equal(errors.length, 1);
  });
});

describe('errors during the stream', () => {
  test('an error event is a StreamError; the deltas before it were delivered', async () => {
    script = ({ res }) =>
      stream(res, [
        event(1, { type: 'delta', text: 'partial ' }),
        event(2, { type: 'delta', text: 'answer' }),
        event(3, { type: 'error', code: 'upstream_timeout', message: 'The upstream sent nothing for 30 s' }),
      ]);
    const deltas = [];
    const errors = [];
    await assert.rejects(
      streamChat({ url: base, messages: MESSAGES, onDelta: (t) => deltas.push(t), onError: (e) => errors.push(e) }),
      (err) => {
        assert.ok(err instanceof StreamError && err instanceof TokenRelayError);
        assert.equal(err.code, 'upstream_timeout');
        assert.equal(err.message, 'The upstream sent nothing for 30 s');
        assert.equal(err.requestId, REQUEST_ID);
        assert.deepEqual(errors, [err]);
        return true;
      },
    );
    assert.deepEqual(deltas, ['partial ', 'answer']);
  });

  test('chatEvents throws the StreamError after yielding the deltas', async () => {
    script = ({ res }) =>
      stream(res, [event(1, { type: 'delta', text: 'x' }), event(2, { type: 'error', code: 'shutdown', message: 'bye' })]);
    const seen = [];
    await assert.rejects(async () => {
      for await (const e of chatEvents({ url: base, messages: MESSAGES })) seen.push(e);
    }, StreamError);
    assert.deepEqual(seen, [{ type: 'delta', text: 'x' }]);
  });

  test('the connection destroyed mid-stream is stream_interrupted', async () => {
    script = async ({ res }) => {
      await stream(res, [event(1, { type: 'delta', text: 'a' })], { end: false });
      await sleep(10);
      res.socket?.destroy();
    };
    const deltas = [];
    await assert.rejects(streamChat({ url: base, messages: MESSAGES, onDelta: (t) => deltas.push(t) }), (err) => {
      assert.ok(err instanceof ConnectionError);
      assert.equal(err.code, 'stream_interrupted');
      assert.equal(err.requestId, REQUEST_ID);
      return true;
    });
    assert.deepEqual(deltas, ['a']);
  });

  test('a stream that ends cleanly without done is stream_interrupted', async () => {
    script = ({ res }) => stream(res, [event(1, { type: 'delta', text: 'a' }), 'data: {"type":"de']);
    await assert.rejects(collect(chatEvents({ url: base, messages: MESSAGES })), (err) => {
      assert.ok(err instanceof ConnectionError && !(err instanceof ProtocolError));
      assert.equal(err.code, 'stream_interrupted');
      return true;
    });
  });

  test('an unreadable event is a ProtocolError and closes the connection', async () => {
    script = ({ res }) => stream(res, ['data: {not json\n\n', event(2, { type: 'delta', text: 'never read' })], { end: false, delay: 20 });
    await assert.rejects(collect(chatEvents({ url: base, messages: MESSAGES })), (err) => {
      assert.ok(err instanceof ProtocolError);
      assert.equal(err.code, 'protocol_error');
      assert.equal(err.requestId, REQUEST_ID);
      return true;
    });
    assert.equal(await closedWithin2s(exchanges[0]), false);
  });

  test('an oversize event is a ProtocolError', async () => {
    script = ({ res }) => stream(res, [`data: ${'x'.repeat(5000)}\n\n`]);
    await assert.rejects(collect(chatEvents({ url: base, messages: MESSAGES, maxEventBytes: 1024 })), ProtocolError);
  });
});

describe('leaving early closes the connection', () => {
  /** A stream that sends one delta, then goes quiet for a long time, as a slow model would. */
  const slowStream = ({ res }) =>
    stream(res, [event(1, { type: 'delta', text: 'first' }), ': ping\n\n'], { end: false, delay: 5 });

  test('abort mid-stream: AbortError, onError, and the server sees the close', async () => {
    // Two deltas in one write: the abort during the first must keep the second from onDelta.
    const twoDeltas = event(1, { type: 'delta', text: 'first' }) + event(2, { type: 'delta', text: 'second' });
    script = ({ res }) => stream(res, [twoDeltas, ': ping\n\n'], { end: false, delay: 5 });
    const controller = new AbortController();
    const deltas = [];
    const errors = [];
    const pending = streamChat({
      url: base,
      messages: MESSAGES,
      signal: controller.signal,
      onDelta: (text) => {
        deltas.push(text);
        controller.abort();
      },
      onError: (e) => errors.push(e),
    });
    await assert.rejects(pending, (err) => {
      assert.ok(isAbortError(err));
      assert.equal(err.name, 'AbortError');
      assert.deepEqual(errors, [err]);
      return true;
    });
    assert.deepEqual(deltas, ['first']);
    assert.equal(await closedWithin2s(exchanges[0]), false);
  });

  test('abort while the consumer is not reading still closes the connection', async () => {
    script = slowStream;
    const controller = new AbortController();
    const iterator = chatEvents({ url: base, messages: MESSAGES, signal: controller.signal });
    assert.deepEqual((await iterator.next()).value, { type: 'delta', text: 'first' });
    controller.abort();
    assert.equal(await closedWithin2s(exchanges[0]), false);
    await assert.rejects(iterator.next(), (err) => isAbortError(err));
  });

  test('abort closes the connection even with a fetch that ignores the signal', async () => {
    script = slowStream;
    /** @type {typeof fetch} */
    const deafFetch = (input, init) => fetch(input, { ...init, signal: undefined });
    const controller = new AbortController();
    const iterator = chatEvents({ url: base, messages: MESSAGES, signal: controller.signal, fetch: deafFetch });
    await iterator.next();
    controller.abort();
    assert.equal(await closedWithin2s(exchanges[0]), false);
    await assert.rejects(iterator.next(), (err) => isAbortError(err));
  });

  test('abort before the response arrives', async () => {
    const controller = new AbortController();
    script = async ({ res }) => {
      controller.abort();
      await sleep(50);
      await stream(res, [HELLO]);
    };
    await assert.rejects(streamChat({ url: base, messages: MESSAGES, signal: controller.signal }), (err) => isAbortError(err));
    assert.equal(await closedWithin2s(exchanges[0]), false);
  });

  test('an already aborted signal sends nothing', async () => {
    await assert.rejects(
      streamChat({ url: base, messages: MESSAGES, signal: AbortSignal.abort() }),
      (err) => isAbortError(err),
    );
    assert.equal(exchanges.length, 0);
  });

  test("an abort reason that is an Error is the rejection; one that is not becomes an AbortError", async () => {
    const reason = new Error('user navigated away');
    await assert.rejects(streamChat({ url: base, messages: MESSAGES, signal: AbortSignal.abort(reason) }), (err) => err === reason);
    await assert.rejects(streamChat({ url: base, messages: MESSAGES, signal: AbortSignal.abort('bye') }), (err) => {
      assert.ok(err instanceof DOMException);
      assert.equal(err.name, 'AbortError');
      return true;
    });
  });

  test('break out of for await closes the connection', async () => {
    script = slowStream;
    for await (const e of chatEvents({ url: base, messages: MESSAGES })) {
      assert.equal(e.type, 'delta');
      break;
    }
    assert.equal(await closedWithin2s(exchanges[0]), false);
  });

  test('an exception in onDelta stops the stream, reaches onError and rejects', async () => {
    script = slowStream;
    const bug = new Error('bug in onDelta');
    const errors = [];
    await assert.rejects(
      streamChat({
        url: base,
        messages: MESSAGES,
        onDelta: () => {
          throw bug;
        },
        onError: (e) => errors.push(e),
      }),
      (err) => err === bug,
    );
    assert.deepEqual(errors, [bug]);
    assert.equal(await closedWithin2s(exchanges[0]), false);
  });

  test('an exception in onDone rejects; one in onError replaces the error', async () => {
    script = ({ res }) => stream(res, [HELLO]);
    const doneBug = new Error('bug in onDone');
    const errors = [];
    await assert.rejects(
      streamChat({
        url: base,
        messages: MESSAGES,
        onDone: () => {
          throw doneBug;
        },
        onError: (e) => errors.push(e),
      }),
      (err) => err === doneBug,
    );
    assert.deepEqual(errors, []);

    script = ({ res }) => reply(res, 400, errorBody('bad', 'invalid_request_error', 'invalid_request_error'));
    const errorBug = new Error('bug in onError');
    await assert.rejects(
      streamChat({
        url: base,
        messages: MESSAGES,
        onError: () => {
          throw errorBug;
        },
      }),
      (err) => err === errorBug,
    );
  });
});

describe('options', () => {
  test('invalid options are a TypeError before any request', async () => {
    const invalid = [
      { url: base },
      { url: base, messages: [] },
      { url: base, messages: 'Hello' },
      { url: base, messages: [{ content: 'no role' }] },
      { url: base, messages: MESSAGES, params: 'hot' },
      { url: base, messages: MESSAGES, model: 42 },
      { url: base, messages: MESSAGES, maxEventBytes: 0 },
      { url: 42, messages: MESSAGES },
      { messages: MESSAGES }, // no page origin to default to in Node
    ];
    for (const options of invalid) {
      const errors = [];
      await assert.rejects(
        streamChat(/** @type {any} */ ({ ...options, onError: (e) => errors.push(e) })),
        TypeError,
        JSON.stringify(options),
      );
      assert.deepEqual(errors, []);
      await assert.rejects(collect(chatEvents(/** @type {any} */ (options))), TypeError);
    }
    const badCallback = /** @type {any} */ ({ url: base, messages: MESSAGES, onDelta: 'not a function' });
    await assert.rejects(streamChat(badCallback), TypeError);
    await assert.rejects(listModels(/** @type {any} */ ({ url: base, fetch: 'nope' })), TypeError);
    assert.equal(exchanges.length, 0);
  });
});

describe('listModels', () => {
  test('returns the model ids and sends the key', async () => {
    script = ({ res }) =>
      reply(res, 200, {
        object: 'list',
        data: [
          { id: 'tokenrelay-sim', object: 'model', created: 0, owned_by: 'tokenrelay' },
          { id: 'gpt-4o-mini', object: 'model', created: 0, owned_by: 'openai' },
        ],
      });
    assert.deepEqual(await listModels({ url: `${base}/`, apiKey: 'sk-test' }), ['tokenrelay-sim', 'gpt-4o-mini']);
    const [{ req }] = exchanges;
    assert.equal(req.method, 'GET');
    assert.equal(req.url, '/v1/models');
    assert.equal(req.headers.authorization, 'Bearer sk-test');
  });

  test('an error response is an APIError', async () => {
    script = ({ res }) => reply(res, 401, errorBody('Missing API key', 'authentication_error', 'missing_api_key'));
    await assert.rejects(listModels({ url: base }), (err) => {
      assert.ok(err instanceof AuthenticationError);
      assert.equal(err.code, 'missing_api_key');
      return true;
    });
  });

  test('a body that is not the list is a ProtocolError', async () => {
    script = ({ res }) => reply(res, 200, '<html>hello</html>');
    await assert.rejects(listModels({ url: base }), ProtocolError);
  });
});
