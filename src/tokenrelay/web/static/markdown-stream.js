// Streaming Markdown for model answers, over markdown.js (which renders; see its safety notes).
//
// `StreamingMarkdown` renders a growing answer once per frame without starting
// over. Finished top-level blocks are rendered once and kept; only the last block (and at
// most one before it, until the line after it is complete) is rendered again. A last block
// that is a long paragraph keeps the start of its text that no later text can change, and an
// open code fence only appends once it is large (it is highlighted whole when it ends).

import { appendTokens, codeBlock, fillCode, languageOf, md, renderTokens } from "./markdown.js";

/** @typedef {import("./markdown.js").Token} Token */

/** Open code fences longer than this are appended to, not highlighted again, each frame. */
const HIGHLIGHT_LIVE_LIMIT = 4000;
/** A line being written that may still become an ordered list's next item. */
const MAYBE_ITEM = /^ {0,3}\d{0,9}$/;
/** Characters that, left unpaired in a paragraph's text, may pair with text still to come. */
const UNPAIRED = /[`*_~[\]]/;

/**
 * The line where the blocks that are final end, in markdown-it's tokens of `text` (0: none).
 * A block is final once a later block has started on a complete line (and, for a table,
 * once its delimiter row is complete too: a table starts a line above what makes it one),
 * or on the line being written when the line before it is blank: no later text can then
 * join the two (unless that line is digits so far: `1` may become `1.`, the next item of a
 * list above). A start on the line being written otherwise is not enough: `text\n#` is a
 * paragraph and a heading, `text\n#tag` one paragraph.
 * @param {Token[]} tokens
 * @param {string} text
 * @returns {number}
 */
export function finishedLines(tokens, text) {
  const lines = text.split("\n");
  const partial = lines.length - 1; // the line being written (may be empty)
  let boundary = 0;
  for (const token of tokens) {
    if (token.level !== 0 || token.nesting === -1 || !token.map) continue;
    const start = token.map[0];
    if (start === 0) continue;
    const table = token.type === "table_open";
    const settled = table
      ? start + 1 < partial
      : start < partial || (start === partial && !lines[start - 1].trim() && !MAYBE_ITEM.test(lines[partial]));
    if (settled) boundary = start;
  }
  return boundary;
}

/**
 * How much of the start of a paragraph's last piece of text no later text can change: it ends
 * with a space before a word, and in its own inline parse every delimiter (`*_~` and code and
 * link brackets) is paired. With markdown-it's typographer off, later text then cannot join
 * it (emphasis pairs left to right, a finished URL or word cannot grow across the space).
 * @param {string} text
 * @returns {number}
 */
export function stableCut(text) {
  const special = text.search(UNPAIRED);
  for (const limit of special === -1 ? [text.length - 1] : [text.length - 1, special]) {
    const cut = wordStartBefore(text, limit);
    if (cut === 0) return 0;
    if (special === -1 || cut <= special) return cut; // plain text: nothing in it can pair
    const [inline] = md.parseInline(text.slice(0, cut), {});
    if ((inline?.children ?? []).every((/** @type {Token} */ t) => t.type !== "text" || !UNPAIRED.test(t.content))) return cut;
  }
  return 0;
}

/** The last position at or before `limit` that starts a word after a space (0: none). @param {string} text @param {number} limit */
function wordStartBefore(text, limit) {
  for (let i = Math.min(limit, text.length - 1); i > 0; i -= 1) {
    if (text[i - 1] === " " && !/\s/.test(text[i])) return i;
  }
  return 0;
}

/**
 * Renders a growing Markdown answer into a container, touching only its end.
 *
 * `update(text)` once per frame with the whole answer so far; `finish()` at the end draws the
 * last block whole (a long code fence highlighted). The result is what `renderMarkdown` of the
 * whole text gives (a browser test checks this at every length), except that a reference
 * definition (`[x]: url`) applies to links after it only.
 */
/**
 * @typedef {{kind: "paragraph", at: number, p: HTMLElement, kept: string, pending: Node[]}} GrowingParagraph
 * @typedef {{kind: "code", at: number, info: string, code: HTMLElement, text: string, live: boolean}} GrowingCode
 */

export class StreamingMarkdown {
  /** The answer so far, as given and with its line endings made LF. */
  raw = "";
  source = "";
  /** Where the text not yet drawn in kept blocks starts. */
  committed = 0;
  /** Reference definitions in the kept blocks (`[x]: url`). @type {Record<string, any>} */
  references = {};
  /** @type {Node[]} the nodes of the blocks drawn again each frame */
  tail = [];
  /**
   * The last block when it grows in place: a paragraph with the start of its text kept, or
   * an open code fence.
   * @type {GrowingParagraph | GrowingCode | null}
   */
  growing = null;

  /** @param {HTMLElement} container @param {Document} [doc] */
  constructor(container, doc = document) {
    this.container = container;
    this.doc = doc;
    this.reset();
  }

  reset() {
    this.container.replaceChildren();
    this.raw = "";
    this.source = "";
    this.committed = 0;
    this.references = {};
    this.tail = [];
    this.growing = null;
  }

  /** Show `text`, the whole answer so far (it only grows; else the view starts over). */
  update(/** @type {string} */ raw) {
    if (!raw.startsWith(this.raw)) this.reset();
    // Line endings made LF as markdown-it does (its line numbers count LFs), a step at a time.
    let added = raw.slice(this.raw.length);
    if (this.raw.endsWith("\r") && added.startsWith("\n")) added = added.slice(1); // a CRLF split in two
    this.raw = raw;
    const text = (this.source += added.replace(/\r\n?/g, "\n"));
    let tail = text.slice(this.committed);
    let tokens = md.parse(tail, { references: { ...this.references } });
    const finished = finishedLines(tokens, tail);
    if (finished > 0) {
      const offset = lineOffset(tail, finished);
      const kept = tokens.slice(0, firstTokenAtLine(tokens, finished));
      this.#keep(kept, tail.slice(0, offset));
      this.committed += offset;
      tail = tail.slice(offset);
      tokens = md.parse(tail, { references: { ...this.references } });
    }
    this.#drawTail(tokens);
  }

  /** The answer is complete: draw its last block whole. */
  finish() {
    const tail = this.source.slice(this.committed);
    this.#keep(md.parse(tail, { references: { ...this.references } }), tail);
    this.committed = this.source.length;
  }

  /** Draw finished blocks once, before the tail, which is dropped. @param {Token[]} tokens @param {string} text */
  #keep(tokens, text) {
    this.#dropTail();
    if (text.includes("]:")) {
      const env = { references: { ...this.references } };
      md.parse(text, env); // the blocks' reference definitions, for the links after them
      this.references = env.references;
    }
    this.container.appendChild(renderTokens(tokens, this.doc));
  }

  #dropTail() {
    for (const node of this.tail) node.parentNode?.removeChild(node);
    this.tail = [];
    this.growing = null;
  }

  /** @param {Token[]} tokens the blocks not final yet */
  #drawTail(tokens) {
    const blocks = tokens.filter((t) => t.level === 0 && t.nesting !== -1);
    const only = blocks.length === 1 ? blocks[0] : null;
    if (only?.type === "paragraph_open" && tokens.length === 3 && tokens[1].type === "inline") {
      this.#growParagraph(tokens[1].content);
    } else if (only?.type === "fence") {
      this.#growCode(only);
    } else {
      this.#dropTail();
      const fragment = renderTokens(tokens, this.doc);
      this.tail = [...fragment.childNodes];
      this.container.appendChild(fragment);
    }
  }

  /** @param {string} content the paragraph's inline text */
  #growParagraph(content) {
    const previous = this.growing;
    /** @type {GrowingParagraph} */
    let growing;
    if (previous?.kind === "paragraph" && previous.at === this.committed && content.startsWith(previous.kept)) {
      growing = previous;
    } else {
      this.#dropTail();
      const p = this.doc.createElement("p");
      this.container.appendChild(p);
      this.tail = [p];
      growing = { kind: "paragraph", at: this.committed, p, kept: "", pending: [] };
      this.growing = growing;
    }
    for (const node of growing.pending) node.parentNode?.removeChild(node);
    let rest = content.slice(growing.kept.length);
    const cut = stableCut(rest);
    if (cut > 0) {
      appendTokens(growing.p, md.parseInline(rest.slice(0, cut), {}), this.doc);
      growing.kept += rest.slice(0, cut);
      rest = rest.slice(cut);
    }
    const before = growing.p.childNodes.length;
    appendTokens(growing.p, md.parseInline(rest, { references: this.references }), this.doc);
    growing.pending = [...growing.p.childNodes].slice(before);
  }

  /** @param {Token} fence */
  #growCode(fence) {
    const growing = this.growing;
    const text = fence.content;
    if (growing?.kind === "code" && growing.at === this.committed && growing.info === fence.info && text.startsWith(growing.text)) {
      if (growing.live && text.length <= HIGHLIGHT_LIVE_LIMIT) {
        fillCode(growing.code, text, languageOf(fence.info), this.doc, true);
      } else {
        // Too long to highlight every frame: the new text is appended plainly until the end.
        if (growing.live) fillCode(growing.code, growing.text, "", this.doc, false);
        growing.code.appendChild(this.doc.createTextNode(text.slice(growing.text.length)));
        growing.live = false;
      }
      growing.text = text;
      return;
    }
    this.#dropTail();
    const live = text.length <= HIGHLIGHT_LIVE_LIMIT;
    const { block, code } = codeBlock(text, languageOf(fence.info), this.doc, live);
    this.container.appendChild(block);
    this.tail = [block];
    this.growing = { kind: "code", at: this.committed, info: fence.info, code, text, live };
  }
}

/** Where line `line` of `text` starts. @param {string} text @param {number} line */
function lineOffset(text, line) {
  let offset = 0;
  for (let i = 0; i < line; i += 1) offset = text.indexOf("\n", offset) + 1;
  return offset;
}

/** The index of the first top-level token starting at or after `line`. @param {Token[]} tokens @param {number} line */
function firstTokenAtLine(tokens, line) {
  const index = tokens.findIndex((t) => t.level === 0 && t.nesting !== -1 && t.map && t.map[0] >= line);
  return index === -1 ? tokens.length : index;
}
