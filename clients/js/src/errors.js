// Typed errors. Every failure the client reports is a TokenRelayError with a string `code`,
// except an abort, which rejects with the standard AbortError (see isAbortError) so that it
// behaves like any other fetch-based API.

/** Base class of every error this package throws (aborts excepted). */
export class TokenRelayError extends Error {
  /**
   * @param {string} code machine-readable reason, e.g. "model_not_found", "stream_interrupted"
   * @param {string} message
   * @param {{cause?: unknown}} [options]
   */
  constructor(code, message, options) {
    super(message, options);
    this.name = new.target.name;
    /** @type {string} */
    this.code = code;
  }
}

/**
 * The gateway answered with a non-2xx status before the stream started.
 * Subclasses tell the broad kind apart; `code` tells the exact reason.
 */
export class APIError extends TokenRelayError {
  /**
   * @param {{status: number, code: string, message: string, type?: string | null,
   *   param?: string | null, requestId?: string | null, retryAfter?: number | null,
   *   body?: string}} fields
   */
  constructor({ status, code, message, type = null, param = null, requestId = null, retryAfter = null, body = '' }) {
    super(code, message);
    /** HTTP status. */
    this.status = status;
    /** The body's `error.type`, e.g. "invalid_request_error"; null when the body is not the gateway's JSON. */
    this.type = type;
    /** The request field at fault, when the gateway named one. */
    this.param = param;
    /** The response's `X-Request-ID`, to quote in bug reports and to find the gateway's logs. */
    this.requestId = requestId;
    /** Seconds to wait before retrying (`Retry-After`), or null when the response gave none. */
    this.retryAfter = retryAfter;
    /** The raw response body. */
    this.body = body;
  }
}

/** 429: rate limited (`upstream_rate_limited`, `rate_limit_exceeded`) or over budget (`budget_exceeded`). */
export class RateLimitError extends APIError {}

/** 401 or 403: missing, wrong or insufficient API key. */
export class AuthenticationError extends APIError {}

/** 400, 404, 413, 422 (or another 4xx): the request itself was refused (bad field, unknown model, too large). */
export class BadRequestError extends APIError {}

/** 5xx: the gateway or its upstream could not serve the request (may succeed if retried later). */
export class UpstreamError extends APIError {}

/** An `error` event after the stream started; the deltas before it were delivered. */
export class StreamError extends TokenRelayError {
  /**
   * @param {string} code e.g. "upstream_timeout", "upstream_protocol_error", "shutdown"
   * @param {string} message
   * @param {string | null} [requestId]
   */
  constructor(code, message, requestId = null) {
    super(code, message);
    /** @type {string | null} */
    this.requestId = requestId;
  }
}

/**
 * The conversation with the gateway broke: the request could not be sent
 * (`connection_failed`) or the stream ended without a `done` or `error` event
 * (`stream_interrupted`).
 */
export class ConnectionError extends TokenRelayError {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{cause?: unknown, requestId?: string | null}} [options]
   */
  constructor(code, message, { cause, requestId = null } = {}) {
    super(code, message, cause === undefined ? undefined : { cause });
    /** @type {string | null} */
    this.requestId = requestId;
  }
}

/** The response could not be read as the protocol (malformed event, oversize event, wrong content type). */
export class ProtocolError extends ConnectionError {
  /**
   * @param {string} message
   * @param {{cause?: unknown, requestId?: string | null}} [options]
   */
  constructor(message, options) {
    super('protocol_error', message, options);
  }
}

/**
 * True for the rejection an aborted request produces (`err.name === "AbortError"`).
 * A signal aborted with a reason of its own rejects with that reason instead, e.g.
 * `AbortSignal.timeout()` gives a "TimeoutError" DOMException, for which this is false.
 * @param {unknown} err
 * @returns {boolean}
 */
export function isAbortError(err) {
  return typeof err === 'object' && err !== null && /** @type {{name?: unknown}} */ (err).name === 'AbortError';
}

/**
 * What an aborted operation rejects with: the signal's reason when it is an Error (a
 * DOMException is one), else a standard AbortError.
 * @param {AbortSignal} signal
 * @returns {Error}
 */
export function abortError(signal) {
  const reason = signal.reason;
  if (reason instanceof Error) return reason;
  return new DOMException(
    reason === undefined ? 'The operation was aborted.' : `The operation was aborted: ${String(reason)}`,
    'AbortError',
  );
}

/** @typedef {Headers | Record<string, string | undefined> | null | undefined} HeadersLike */

/**
 * Builds the typed error for a non-2xx response.
 * @param {number} status
 * @param {string} bodyText the raw body (JSON in the gateway's OpenAI shape, or anything a proxy sent)
 * @param {HeadersLike} [headers] for `X-Request-ID` and `Retry-After`
 * @returns {APIError}
 */
export function errorFromResponse(status, bodyText, headers) {
  const detail = parseErrorBody(bodyText);
  const fields = {
    status,
    code: detail.code ?? 'http_error', // the Python client's code for a body that is not ours
    message: detail.message ?? `HTTP ${status}${excerpt(bodyText)}`,
    type: detail.type ?? null,
    param: detail.param ?? null,
    requestId: getHeader(headers, 'x-request-id'),
    retryAfter: parseRetryAfter(getHeader(headers, 'retry-after')),
    body: bodyText,
  };
  if (status === 429) return new RateLimitError(fields);
  if (status === 401 || status === 403) return new AuthenticationError(fields);
  if (status >= 500 && status <= 599) return new UpstreamError(fields);
  // 400, 404, 413, 422 and any other 4xx: the request itself was refused.
  if (status >= 400 && status <= 499) return new BadRequestError(fields);
  return new APIError(fields);
}

/**
 * Reads `{"error": {message, type, param, code}}`; also FastAPI's default `{"detail": "..."}`.
 * Anything else yields no fields, and the caller falls back to the status and a text excerpt.
 * @param {string} text
 * @returns {{message?: string, type?: string, param?: string, code?: string}}
 */
function parseErrorBody(text) {
  /** @type {unknown} */
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    return {};
  }
  if (!isObject(json)) return {};
  if (isObject(json.error)) {
    const { message, type, param, code } = json.error;
    return {
      message: nonEmptyString(message),
      type: nonEmptyString(type),
      param: nonEmptyString(param),
      // Fall back to `type` so a body without a code still classifies ("invalid_request_error").
      code: nonEmptyString(code) ?? nonEmptyString(type),
    };
  }
  return { message: nonEmptyString(json.detail) };
}

/**
 * A short readable excerpt of a non-JSON body (an HTML error page from a proxy, say).
 * @param {string} text
 * @returns {string} "" or ": <excerpt>"
 */
function excerpt(text) {
  const plain = text
    .replace(/<(script|style)[^>]*>[\s\S]*?<\/\1>/gi, ' ')
    .replace(/<[^>]*>/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  if (!plain) return '';
  return `: ${plain.length > 200 ? `${plain.slice(0, 200)}…` : plain}`;
}

/**
 * `Retry-After` is delta-seconds or an HTTP date (RFC 9110); either becomes seconds from now.
 * @param {string | null} value
 * @returns {number | null}
 */
function parseRetryAfter(value) {
  if (value == null) return null;
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed);
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return null;
  return Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

/**
 * @param {HeadersLike} headers
 * @param {string} name lower-case
 * @returns {string | null}
 */
function getHeader(headers, name) {
  if (!headers) return null;
  // Duck-typed rather than `instanceof Headers`: an injected fetch may bring its own Headers class.
  if (typeof headers.get === 'function') return /** @type {Headers} */ (headers).get(name);
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() === name && value != null) return String(value);
  }
  return null;
}

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * @param {unknown} value
 * @returns {string | undefined}
 */
function nonEmptyString(value) {
  return typeof value === 'string' && value !== '' ? value : undefined;
}
