// Against a live gateway: the Python test suite sets TOKENRELAY_TEST_URL (and may set
// TOKENRELAY_TEST_MODEL); without it every test here is skipped.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { APIError, chatEvents, listModels, streamChat } from '../src/index.js';

const url = process.env.TOKENRELAY_TEST_URL;
const model = process.env.TOKENRELAY_TEST_MODEL || 'tokenrelay-sim';
const apiKey = process.env.TOKENRELAY_TEST_API_KEY || undefined;
const skip = url ? false : 'TOKENRELAY_TEST_URL is not set';
const messages = [{ role: 'user', content: 'Say hello in a few words.' }];

describe('live gateway', () => {
  test('streams a chat: deltas, usage, done', { skip }, async () => {
    const events = [];
    for await (const event of chatEvents({ url, apiKey, model, messages, params: { max_tokens: 16 } })) {
      events.push(event);
    }
    const types = events.map((event) => event.type);
    assert.ok(types.filter((type) => type === 'delta').length >= 1, `deltas in ${types}`);
    assert.ok(types.includes('usage'), `usage in ${types}`);
    assert.equal(types.at(-1), 'done');
  });

  test('streamChat resolves to the whole answer', { skip }, async () => {
    const result = await streamChat({ url, apiKey, model, messages, params: { max_tokens: 16 } });
    assert.ok(result.text.length > 0);
    assert.ok(result.usage && result.usage.total_tokens > 0);
    assert.equal(typeof result.requestId, 'string');
    assert.equal(typeof result.timeToFirstTokenMs, 'number');
  });

  test('lists the models', { skip }, async () => {
    const models = await listModels({ url, apiKey });
    assert.ok(models.includes(model), `${model} in ${models}`);
  });

  test('an unknown model is a 404 model_not_found', { skip }, async () => {
    await assert.rejects(streamChat({ url, apiKey, model: 'no-such-model', messages }), (err) => {
      assert.ok(err instanceof APIError);
      assert.equal(err.status, 404);
      assert.equal(err.code, 'model_not_found');
      assert.equal(typeof err.requestId, 'string');
      return true;
    });
  });
});
