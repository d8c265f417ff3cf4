// An incremental Server-Sent Events parser following the WHATWG HTML "event stream
// interpretation" (https://html.spec.whatwg.org/multipage/server-sent-events.html), without
// EventSource's networking: bytes (or text) in, complete events out.

import { ProtocolError } from './errors.js';

/**
 * One dispatched event.
 * @typedef {object} SSEMessage
 * @property {string} event the `event` field, "message" when the event had none
 * @property {string} data the `data` lines joined with "\n"
 * @property {string | undefined} id the last event ID seen on the stream so far (it persists
 *   across events, as the spec says), undefined while no `id` field has been seen
 */

/**
 * @typedef {object} SSEParserOptions
 * @property {number} [maxEventBytes] the most UTF-8 bytes one event may take on the wire
 *   (all its lines and line ends, up to the blank line; default 1 MiB); more throws a
 *   ProtocolError, so a stream that never ends an event cannot grow memory without bound
 */

const LF = 0x0a;
const CR = 0x0d;
const BOM = 0xfeff;

export class SSEParser {
  /** One decoder for the whole stream, so a character split across chunks decodes whole. */
  #decoder = new TextDecoder('utf-8', { ignoreBOM: true }); // the BOM is stripped below, once
  #lineEnd = /[\r\n]/g;
  #maxEventBytes;

  /**
   * The line being read, as pieces: joined only once the line ends, so a long line arriving in
   * many chunks costs O(length), not O(length²).
   * @type {string[]}
   */
  #lineParts = [];
  #lineBytes = 0;
  /** The previous chunk ended with "\r": a "\n" opening the next one ends no second line. */
  #afterCR = false;
  #atStart = true;

  /** Bytes of the current event's complete lines, for the bound. */
  #eventBytes = 0;
  /** @type {string[]} */
  #data = [];
  #eventType = '';
  /** @type {string | undefined} */
  #lastEventId = undefined;

  /** @param {SSEParserOptions} [options] */
  constructor({ maxEventBytes = 1024 * 1024 } = {}) {
    if (!(maxEventBytes > 0)) throw new RangeError('maxEventBytes must be a positive number');
    this.#maxEventBytes = maxEventBytes;
  }

  /**
   * Parses the next piece of the stream.
   * @param {Uint8Array | string} chunk bytes (UTF-8, split anywhere) or already decoded text
   * @returns {SSEMessage[]} the events this chunk completes, in order
   * @throws {ProtocolError} when an event grows past maxEventBytes
   */
  feed(chunk) {
    const text = typeof chunk === 'string' ? chunk : this.#decoder.decode(chunk, { stream: true });
    return this.#parse(text);
  }

  /**
   * Ends the stream. An event not closed by a blank line is discarded, as the spec says,
   * and the parser is ready for a new stream (the last event ID is kept).
   * @returns {SSEMessage[]} the events the decoder's remaining bytes complete (in practice none)
   */
  end() {
    const events = this.#parse(this.#decoder.decode());
    this.#lineParts = [];
    this.#lineBytes = 0;
    this.#afterCR = false;
    this.#atStart = true;
    this.#resetEvent();
    return events;
  }

  /**
   * @param {string} text
   * @returns {SSEMessage[]}
   */
  #parse(text) {
    /** @type {SSEMessage[]} */
    const events = [];
    if (text === '') return events;
    let start = 0;
    if (this.#atStart) {
      this.#atStart = false;
      if (text.charCodeAt(0) === BOM) start = 1;
    }
    if (this.#afterCR) {
      this.#afterCR = false;
      if (text.charCodeAt(start) === LF) start += 1;
    }
    this.#lineEnd.lastIndex = start;
    for (let match = this.#lineEnd.exec(text); match !== null; match = this.#lineEnd.exec(text)) {
      const end = match.index;
      this.#endLine(text.slice(start, end), events);
      start = end + 1;
      if (text.charCodeAt(end) === CR) {
        if (start === text.length) this.#afterCR = true;
        else if (text.charCodeAt(start) === LF) start += 1;
      }
      this.#lineEnd.lastIndex = start;
    }
    if (start < text.length) {
      const rest = text.slice(start);
      this.#lineParts.push(rest);
      this.#lineBytes += utf8Length(rest);
      this.#checkSize(this.#eventBytes + this.#lineBytes);
    }
    return events;
  }

  /**
   * @param {string} tail the end of the line (all of it unless earlier chunks held its start)
   * @param {SSEMessage[]} events
   */
  #endLine(tail, events) {
    let line = tail;
    let bytes = utf8Length(tail);
    if (this.#lineParts.length > 0) {
      this.#lineParts.push(tail);
      line = this.#lineParts.join('');
      bytes += this.#lineBytes;
      this.#lineParts = [];
      this.#lineBytes = 0;
    }
    if (line === '') {
      this.#dispatch(events);
      return;
    }
    this.#eventBytes += bytes + 1;
    this.#checkSize(this.#eventBytes);
    if (line.charCodeAt(0) === 0x3a) return; // ":" starts a comment (keep-alive pings)
    const colon = line.indexOf(':');
    if (colon === -1) {
      this.#field(line, '');
    } else {
      const valueStart = line.charCodeAt(colon + 1) === 0x20 ? colon + 2 : colon + 1;
      this.#field(line.slice(0, colon), line.slice(valueStart));
    }
  }

  /**
   * @param {string} name
   * @param {string} value
   */
  #field(name, value) {
    switch (name) {
      case 'data':
        this.#data.push(value);
        break;
      case 'event':
        this.#eventType = value;
        break;
      case 'id':
        if (!value.includes('\0')) this.#lastEventId = value;
        break;
      default:
        break; // "retry" concerns reconnection, which is not ours; unknown fields are ignored
    }
  }

  /** @param {SSEMessage[]} events */
  #dispatch(events) {
    // An event without data lines is not dispatched (the spec's "data buffer is empty").
    if (this.#data.length > 0) {
      events.push({ event: this.#eventType || 'message', data: this.#data.join('\n'), id: this.#lastEventId });
    }
    this.#resetEvent();
  }

  #resetEvent() {
    this.#data = [];
    this.#eventType = '';
    this.#eventBytes = 0;
  }

  /** @param {number} bytes */
  #checkSize(bytes) {
    if (bytes > this.#maxEventBytes) {
      throw new ProtocolError(`An event exceeded ${this.#maxEventBytes} bytes`);
    }
  }
}

/**
 * The UTF-8 length of a string, without encoding it.
 * @param {string} text
 * @returns {number}
 */
function utf8Length(text) {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code >= 0x80) {
      // Two UTF-16 units of a surrogate pair make 4 bytes: 2 extra each; other non-ASCII 1 or 2.
      bytes += code < 0x800 || (code >= 0xd800 && code <= 0xdfff) ? 1 : 2;
    }
  }
  return bytes;
}
