import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import {
  APIError,
  AuthenticationError,
  BadRequestError,
  RateLimitError,
  TokenRelayError,
  UpstreamError,
  errorFromResponse,
  isAbortError,
} from '../src/index.js';

const body = (code, message = 'm') => JSON.stringify({ error: { message, type: 't', param: null, code } });

describe('errorFromResponse', () => {
  test('picks the class from the status', () => {
    const cases = [
      [400, BadRequestError],
      [404, BadRequestError],
      [413, BadRequestError],
      [422, BadRequestError],
      [409, BadRequestError],
      [401, AuthenticationError],
      [403, AuthenticationError],
      [429, RateLimitError],
      [500, UpstreamError],
      [502, UpstreamError],
      [503, UpstreamError],
      [504, UpstreamError],
    ];
    for (const [status, cls] of cases) {
      const err = errorFromResponse(status, body('x'));
      assert.ok(err instanceof cls && err instanceof APIError && err instanceof TokenRelayError, String(status));
      assert.equal(err.name, cls.name);
    }
    assert.equal(errorFromResponse(302, '').constructor, APIError);
  });

  test('reads headers from a Headers object or a plain object, any case', () => {
    const headers = new Headers({ 'X-Request-ID': 'abc', 'Retry-After': '12' });
    assert.equal(errorFromResponse(429, body('rate_limit_exceeded'), headers).retryAfter, 12);
    const plain = errorFromResponse(429, body('rate_limit_exceeded'), { 'x-request-id': 'def', 'RETRY-AFTER': '1.5' });
    assert.equal(plain.requestId, 'def');
    assert.equal(plain.retryAfter, 1.5);
    assert.equal(errorFromResponse(429, body('x')).retryAfter, null);
  });

  test('Retry-After as an HTTP date is seconds from now', () => {
    const inAMinute = new Date(Date.now() + 60_000).toUTCString();
    const seconds = errorFromResponse(429, '', { 'retry-after': inAMinute }).retryAfter;
    assert.ok(seconds !== null && seconds > 55 && seconds <= 60, String(seconds));
    assert.equal(errorFromResponse(429, '', { 'retry-after': 'soon' }).retryAfter, null);
  });

  test('bodies that are not the OpenAI shape', () => {
    const empty = errorFromResponse(502, '');
    assert.equal(empty.message, 'HTTP 502');
    assert.equal(empty.code, 'http_error');
    const detail = errorFromResponse(405, JSON.stringify({ detail: 'Method Not Allowed' }));
    assert.equal(detail.message, 'Method Not Allowed');
    assert.equal(detail.code, 'http_error');
    const long = errorFromResponse(500, 'x'.repeat(1000));
    assert.ok(long.message.length < 220);
    assert.equal(long.body.length, 1000);
    const noCode = errorFromResponse(400, JSON.stringify({ error: { message: 'bad', type: 'invalid_request_error' } }));
    assert.equal(noCode.code, 'invalid_request_error');
    assert.equal(errorFromResponse(400, 'null').code, 'http_error');
  });
});

test('isAbortError', () => {
  assert.ok(isAbortError(new DOMException('x', 'AbortError')));
  assert.ok(!isAbortError(new DOMException('x', 'TimeoutError')));
  assert.ok(!isAbortError(new Error('x')));
  assert.ok(!isAbortError(null));
  assert.ok(!isAbortError('AbortError'));
});
