import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';

import { ConnectionError, ProtocolError, SSEParser } from '../src/index.js';

const recorded = new Uint8Array(readFileSync(new URL('./fixtures/recorded.sse', import.meta.url)));

/** What recorded.sse holds, parsed by hand from the spec. */
const RECORDED_EVENTS = [
  { event: 'message', id: '1', data: '{"type":"delta","text":"Hel"}' },
  { event: 'message', id: '2', data: '{"type":"delta","text":"lo, wörld — café"}' },
  { event: 'message', id: '3', data: '{"type":"delta","text":" 日本語のテキスト"}' },
  { event: 'message', id: '4', data: '{"type":"delta","text":" 🚀🎉 emoji"}' },
  { event: 'message', id: '5', data: '{"type":"delta","text":"\\nline two \\"quoted\\"\\n"}' },
  { event: 'message', id: '6', data: '{"type":"delta",\n"text":"CRLF ✓ 👍🏽"}' },
  // The last event ID persists until another `id` field replaces it.
  { event: 'tokenrelay.debug', id: '6', data: '{"note":"a named event: /chat clients skip it"}' },
  { event: 'message', id: '7', data: '{"type":"delta","text":"!"}' },
  {
    event: 'message',
    id: '8',
    data: '{"type":"usage","prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"source":"upstream"}',
  },
  { event: 'message', id: '9', data: '{"type":"done","finish_reason":"stop"}' },
];

/**
 * Feeds the chunks to a fresh parser, then ends it.
 * @param {Array<Uint8Array | string>} chunks
 * @param {import('../src/index.js').SSEParserOptions} [options]
 */
function parse(chunks, options) {
  const parser = new SSEParser(options);
  const events = chunks.flatMap((chunk) => parser.feed(chunk));
  return [...events, ...parser.end()];
}

/** @param {string} text */
const bytes = (text) => new TextEncoder().encode(text);

/** mulberry32: a tiny seeded generator, so that a failing split can be replayed. */
function random(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('recorded stream', () => {
  test('the fixture has every case the splits must survive', () => {
    const text = new TextDecoder().decode(recorded);
    assert.ok(text.includes('\r\n') && text.includes('\n\n'), 'mixed line endings');
    assert.ok(/[\u{10000}-\u{10FFFF}]/u.test(text), 'a 4-byte character');
    assert.ok(/[\u0800-\uFFFF]/.test(text), 'a 3-byte character');
    assert.ok(/[\u0080-\u07FF]/.test(text), 'a 2-byte character');
  });

  test('parsed whole', () => {
    assert.deepEqual(parse([recorded]), RECORDED_EVENTS);
  });

  test('split in two at every byte offset', () => {
    for (let offset = 0; offset <= recorded.length; offset++) {
      const events = parse([recorded.subarray(0, offset), recorded.subarray(offset)]);
      assert.deepEqual(events, RECORDED_EVENTS, `split at byte ${offset}`);
    }
  });

  test('fed one byte at a time', () => {
    const pieces = Array.from(recorded, (_, i) => recorded.subarray(i, i + 1));
    assert.deepEqual(parse(pieces), RECORDED_EVENTS);
  });

  test('split at random offsets into 3 to 10 pieces (seeded)', () => {
    const next = random(20240601);
    for (let round = 0; round < 500; round++) {
      const count = 3 + Math.floor(next() * 8);
      const cuts = Array.from({ length: count - 1 }, () => Math.floor(next() * (recorded.length + 1))).sort(
        (a, b) => a - b,
      );
      const bounds = [0, ...cuts, recorded.length];
      const pieces = bounds.slice(1).map((end, i) => recorded.subarray(bounds[i], end));
      assert.deepEqual(parse(pieces), RECORDED_EVENTS, `round ${round}, cuts ${cuts.join(',')}`);
    }
  });

  test('decoded text split at every character offset', () => {
    const text = new TextDecoder().decode(recorded);
    for (let offset = 0; offset <= text.length; offset++) {
      assert.deepEqual(parse([text.slice(0, offset), text.slice(offset)]), RECORDED_EVENTS, `split at ${offset}`);
    }
  });
});

describe('line endings', () => {
  test('lone CR', () => {
    assert.deepEqual(parse(['id: 1\rdata: a\rdata: b\r\rdata: c\r\r']), [
      { event: 'message', id: '1', data: 'a\nb' },
      { event: 'message', id: '1', data: 'c' },
    ]);
  });

  test('CR LF split across two chunks is one line break', () => {
    // Two breaks would end the event after "a" and make two events.
    assert.deepEqual(parse(['data: a\r', '\ndata: b\r\n\r\n']), [{ event: 'message', id: undefined, data: 'a\nb' }]);
    assert.deepEqual(parse([bytes('data: a\r'), bytes('\n'), bytes('data: b\r'), bytes('\n\r'), bytes('\n')]), [
      { event: 'message', id: undefined, data: 'a\nb' },
    ]);
  });

  test('CR at the end of a chunk, then an empty chunk, then LF', () => {
    assert.deepEqual(parse(['data: a\r', '', new Uint8Array(0), '\n\r\n']), [
      { event: 'message', id: undefined, data: 'a' },
    ]);
  });

  test('CR CR is two line breaks, LF CR too', () => {
    assert.deepEqual(parse(['data: a\r', '\r']), [{ event: 'message', id: undefined, data: 'a' }]);
    assert.deepEqual(parse(['data: b\n\r']), [{ event: 'message', id: undefined, data: 'b' }]);
  });
});

describe('fields', () => {
  test('a leading BOM is skipped, also when split, but only one', () => {
    const stream = new Uint8Array([0xef, 0xbb, 0xbf, ...bytes('data: x\n\n')]);
    assert.deepEqual(parse([stream]), [{ event: 'message', id: undefined, data: 'x' }]);
    assert.deepEqual(parse([stream.subarray(0, 1), stream.subarray(1, 2), stream.subarray(2)]), [
      { event: 'message', id: undefined, data: 'x' },
    ]);
    assert.deepEqual(parse(['\uFEFFdata: y\n\n']), [{ event: 'message', id: undefined, data: 'y' }]);
    // A second BOM belongs to the field name "\uFEFFdata", which is unknown and ignored.
    assert.deepEqual(parse(['\uFEFF\uFEFFdata: z\n\ndata: w\n\n']), [{ event: 'message', id: undefined, data: 'w' }]);
  });

  test('a BOM later in the stream is not skipped', () => {
    assert.deepEqual(parse(['data: a\n\n', '\uFEFFdata: b\n\n']), [{ event: 'message', id: undefined, data: 'a' }]);
  });

  test('a field without a colon has an empty value', () => {
    assert.deepEqual(parse(['data\n\n']), [{ event: 'message', id: undefined, data: '' }]);
    assert.deepEqual(parse(['data\ndata\ndata: x\n\n']), [{ event: 'message', id: undefined, data: '\n\nx' }]);
    assert.deepEqual(parse(['event\ndata: x\n\n']), [{ event: 'message', id: undefined, data: 'x' }]);
  });

  test('data with and without the single leading space', () => {
    assert.deepEqual(parse(['data:x\n\ndata: x\n\ndata:  x\n\ndata: \n\n']), [
      { event: 'message', id: undefined, data: 'x' },
      { event: 'message', id: undefined, data: 'x' },
      { event: 'message', id: undefined, data: ' x' },
      { event: 'message', id: undefined, data: '' },
    ]);
  });

  test('multi-line data is joined with LF; colons after the first stay in the value', () => {
    assert.deepEqual(parse(['data: a: 1\ndata:\ndata: b\n\n']), [{ event: 'message', id: undefined, data: 'a: 1\n\nb' }]);
  });

  test('comments, retry and unknown fields are ignored; a block without data dispatches nothing', () => {
    assert.deepEqual(parse([': ping\n\nretry: 10\nfoo: bar\n\n:\n\nevent: x\nid: 3\n\ndata: y\nfoo\n\n']), [
      { event: 'message', id: '3', data: 'y' },
    ]);
  });

  test('event names and ids', () => {
    assert.deepEqual(parse(['event: a\ndata: 1\nid: 7\n\ndata: 2\n\nid\ndata: 3\n\nid: x\0y\ndata: 4\n\n']), [
      { event: 'a', id: '7', data: '1' },
      { event: 'message', id: '7', data: '2' },
      { event: 'message', id: '', data: '3' }, // an empty id resets the last event ID
      { event: 'message', id: '', data: '4' }, // an id with NUL is ignored
    ]);
  });

  test('several events in one chunk', () => {
    const events = parse(['data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4']);
    assert.deepEqual(
      events.map((event) => event.data),
      ['1', '2', '3'],
    );
  });

  test('feed returns exactly the events the chunk completes', () => {
    const parser = new SSEParser();
    assert.deepEqual(parser.feed('data: a\n'), []);
    assert.deepEqual(parser.feed('\ndata: b\n\nda'), [
      { event: 'message', id: undefined, data: 'a' },
      { event: 'message', id: undefined, data: 'b' },
    ]);
    assert.deepEqual(parser.feed('ta: c\n'), []);
    assert.deepEqual(parser.feed('\n'), [{ event: 'message', id: undefined, data: 'c' }]);
  });
});

describe('end()', () => {
  test('discards an event without its blank line', () => {
    const parser = new SSEParser();
    assert.deepEqual(parser.feed('data: complete\n\ndata: incomplete\n'), [
      { event: 'message', id: undefined, data: 'complete' },
    ]);
    assert.deepEqual(parser.end(), []);
  });

  test('discards a partial line and a partial character', () => {
    const parser = new SSEParser();
    parser.feed(new Uint8Array([...bytes('data: '), 0xf0, 0x9f]));
    assert.deepEqual(parser.end(), []);
  });

  test('leaves the parser ready for a new stream', () => {
    const parser = new SSEParser();
    parser.feed('data: left over');
    parser.end();
    assert.deepEqual(parser.feed('data: fresh\n\n'), [{ event: 'message', id: undefined, data: 'fresh' }]);
  });
});

describe('maxEventBytes', () => {
  test('an event over the bound throws a ProtocolError', () => {
    const big = `data: ${'x'.repeat(100)}\n\n`;
    assert.throws(
      () => parse([big], { maxEventBytes: 64 }),
      (err) => err instanceof ProtocolError && err instanceof ConnectionError && err.code === 'protocol_error',
    );
  });

  test('a line that never ends throws once it passes the bound, whatever the chunks', () => {
    const parser = new SSEParser({ maxEventBytes: 1000 });
    assert.throws(() => {
      for (let i = 0; i < 100; i++) parser.feed(`${i === 0 ? 'data: ' : ''}${'y'.repeat(20)}`);
    }, ProtocolError);
  });

  test('many data lines add up', () => {
    assert.throws(() => parse(['data: 0123456789\n'.repeat(10) + '\n'], { maxEventBytes: 100 }), ProtocolError);
  });

  test('counts UTF-8 bytes, not characters', () => {
    // 10 emoji are 20 UTF-16 units but 40 bytes: "data: " + 40 + "\n" = 47 bytes.
    const event = `data: ${'😀'.repeat(10)}\n\n`;
    assert.throws(() => parse([event], { maxEventBytes: 46 }), ProtocolError);
    assert.equal(parse([event], { maxEventBytes: 47 }).length, 1);
  });

  test('the bound is per event: many small events pass', () => {
    const events = parse(['data: 0123456789\n\n'.repeat(1000)], { maxEventBytes: 100 });
    assert.equal(events.length, 1000);
  });

  test('a 1 MB event fed in 64-byte chunks parses (linear time)', () => {
    const payload = 'z'.repeat(1_000_000);
    const stream = bytes(`id: big\ndata: ${payload}\n\n`);
    const parser = new SSEParser();
    const events = [];
    for (let offset = 0; offset < stream.length; offset += 64) {
      events.push(...parser.feed(stream.subarray(offset, offset + 64)));
    }
    assert.equal(events.length, 1);
    assert.equal(events[0].id, 'big');
    assert.equal(events[0].data.length, payload.length);
    assert.ok(events[0].data === payload);
  });
});
