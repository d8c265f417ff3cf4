// A small Markdown renderer for model answers that cannot inject HTML: the text is parsed
// into plain block/inline objects, then turned into DOM nodes with createElement and text
// nodes only. No string is ever parsed as HTML, so `<img onerror=...>` in an answer stays
// text. It renders partial input too (an unclosed code fence while tokens still arrive).

/**
 * @typedef {{kind: "text", text: string}
 *   | {kind: "code", text: string}
 *   | {kind: "strong" | "em", children: Inline[]}
 *   | {kind: "link", href: string, children: Inline[]}} Inline
 * @typedef {{kind: "paragraph", lines: Inline[][]}
 *   | {kind: "heading", level: number, children: Inline[]}
 *   | {kind: "code", lang: string, text: string}
 *   | {kind: "list", ordered: boolean, items: Inline[][]}
 *   | {kind: "quote", lines: Inline[][]}} Block
 */

const FENCE = /^\s*(```|~~~)\s*([\w+-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d{1,9}[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
// Links only to the web or mail: `javascript:` and `data:` URLs stay text.
const SAFE_HREF = /^(https?:\/\/|mailto:)/i;
const INLINE =
  /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|(?<!\w)__(?=\S)([\s\S]*?\S)__(?!\w)|\*(?=[^\s*])([^*]*?[^\s*])\*|\[([^\]\n]+)\]\(([^()\s]+)\)/g;

/**
 * Parse Markdown text into blocks.
 * @param {string} source
 * @returns {Block[]}
 */
export function parseMarkdown(source) {
  /** @type {Block[]} */
  const blocks = [];
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !(lines[i].trim() === fence[1])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end of a partial answer)
      blocks.push({ kind: "code", lang: fence[2], text: body.join("\n") });
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      blocks.push({ kind: "heading", level: heading[1].length, children: parseInline(heading[2]) });
      i += 1;
      continue;
    }
    const listPattern = BULLET.test(line) ? BULLET : NUMBERED.test(line) ? NUMBERED : null;
    if (listPattern) {
      const items = [];
      for (let m; i < lines.length && (m = listPattern.exec(lines[i])); i += 1) items.push(parseInline(m[1]));
      blocks.push({ kind: "list", ordered: listPattern === NUMBERED, items });
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      for (let m; i < lines.length && (m = QUOTE.exec(lines[i])); i += 1) quoted.push(parseInline(m[1]));
      blocks.push({ kind: "quote", lines: quoted });
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) paragraph.push(parseInline(lines[i++]));
    blocks.push({ kind: "paragraph", lines: paragraph });
  }
  return blocks;
}

/** @param {string} line */
function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || BULLET.test(line) || NUMBERED.test(line) || QUOTE.test(line);
}

/**
 * Parse the inline spans of one line.
 * @param {string} text
 * @returns {Inline[]}
 */
export function parseInline(text) {
  /** @type {Inline[]} */
  const out = [];
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    const start = m.index ?? 0;
    if (start > last) out.push({ kind: "text", text: text.slice(last, start) });
    if (m[2] !== undefined) out.push({ kind: "code", text: m[2] });
    else if (m[3] !== undefined || m[4] !== undefined) out.push({ kind: "strong", children: parseInline(m[3] ?? m[4]) });
    else if (m[5] !== undefined) out.push({ kind: "em", children: parseInline(m[5]) });
    else if (SAFE_HREF.test(m[7])) out.push({ kind: "link", href: m[7], children: parseInline(m[6]) });
    else out.push({ kind: "text", text: m[0] });
    last = start + m[0].length;
  }
  if (last < text.length) out.push({ kind: "text", text: text.slice(last) });
  return out;
}

/**
 * Render Markdown as DOM nodes (text nodes and a fixed set of elements only).
 * @param {string} source
 * @param {Document} doc
 * @returns {DocumentFragment}
 */
export function renderMarkdown(source, doc = document) {
  const fragment = doc.createDocumentFragment();
  for (const block of parseMarkdown(source)) fragment.append(renderBlock(block, doc));
  return fragment;
}

/** @param {Block} block @param {Document} doc @returns {HTMLElement} */
function renderBlock(block, doc) {
  switch (block.kind) {
    case "code": {
      const pre = doc.createElement("pre");
      const code = pre.appendChild(doc.createElement("code"));
      code.textContent = block.text;
      if (block.lang) code.dataset.lang = block.lang;
      return pre;
    }
    case "heading":
      // Answers sit inside the page: their headings start below the page's own.
      return withInline(doc.createElement(`h${Math.min(block.level + 2, 6)}`), block.children, doc);
    case "list": {
      const list = doc.createElement(block.ordered ? "ol" : "ul");
      for (const item of block.items) list.append(withInline(doc.createElement("li"), item, doc));
      return list;
    }
    case "quote":
      return withLines(doc.createElement("blockquote"), block.lines, doc);
    case "paragraph":
      return withLines(doc.createElement("p"), block.lines, doc);
  }
}

/** @param {HTMLElement} parent @param {Inline[][]} lines @param {Document} doc */
function withLines(parent, lines, doc) {
  lines.forEach((line, index) => {
    if (index > 0) parent.append(doc.createElement("br"));
    withInline(parent, line, doc);
  });
  return parent;
}

/** @param {HTMLElement} parent @param {Inline[]} spans @param {Document} doc */
function withInline(parent, spans, doc) {
  for (const span of spans) {
    if (span.kind === "text") {
      parent.append(doc.createTextNode(span.text));
    } else if (span.kind === "code") {
      const code = doc.createElement("code");
      code.textContent = span.text;
      parent.append(code);
    } else if (span.kind === "link") {
      const link = doc.createElement("a");
      link.href = span.href;
      link.rel = "noopener noreferrer nofollow";
      link.target = "_blank";
      parent.append(withInline(link, span.children, doc));
    } else {
      parent.append(withInline(doc.createElement(span.kind), span.children, doc));
    }
  }
  return parent;
}

// Characters that can open an inline span: text holding none of them, outside finished
// spans, can never become part of a span whatever follows it.
const OPENERS = /[`*_[]/;

/**
 * What a complete line is to the block parser above (same patterns, same precedence).
 * @param {string} line
 * @returns {"fence" | "blank" | "heading" | "bullet" | "numbered" | "quote" | "text"}
 */
function lineKind(line) {
  if (FENCE.test(line)) return "fence";
  if (!line.trim()) return "blank";
  if (HEADING.test(line)) return "heading";
  if (BULLET.test(line)) return "bullet";
  if (NUMBERED.test(line)) return "numbered";
  if (QUOTE.test(line)) return "quote";
  return "text";
}

/**
 * Renders a growing Markdown answer into a container, touching only what changed.
 *
 * An answer arrives a few characters at a time and is shown once per frame; rendering it
 * whole every frame costs time in proportion to its length, so a long answer would get
 * slower with every token. Instead finished blocks are committed -- rendered once, never
 * touched again -- as soon as no later text can change them: the block parser decides a
 * block from its own lines only, so a block is final once the line after it is complete
 * and does not continue it (a blank line, another kind of block), a heading once its line
 * is, a code fence once its closing line is. Of the one block still open:
 * - an open code fence's text node only grows;
 * - an open paragraph keeps its finished lines, and its last line up to a point no later
 *   text can change (see `safeCut`);
 * - anything else (a list, a quote) is rendered again.
 * The result is always the same as `renderMarkdown` of the whole text (a browser test checks
 * this at every length).
 */
export class StreamingMarkdown {
  /** @param {HTMLElement} container @param {Document} doc */
  constructor(container, doc = document) {
    this.container = container;
    this.doc = doc;
    this.reset();
  }

  reset() {
    this.container.replaceChildren();
    /** The text as given, and as parsed (CR and CRLF line endings made LF, as the parser does). */
    this.raw = "";
    this.source = "";
    /** Offset up to which the text is rendered in committed blocks. */
    this.committed = 0;
    /** Offset of the first line not yet scanned. */
    this.scanned = 0;
    /** @type {string | null} the kind of the block open at `scanned` ("fence:```", "text", ...) */
    this.block = null;
    /** @type {Node[]} nodes of the uncommitted tail */
    this.tail = [];
    /** @type {any} incremental state of the tail (a growing code block or paragraph) */
    this.open = null;
  }

  /** Show `raw` (the whole answer so far; it only grows, else the view starts over). */
  update(/** @type {string} */ raw) {
    if (!raw.startsWith(this.raw)) this.reset();
    let added = raw.slice(this.raw.length);
    if (this.raw.endsWith("\r") && added.startsWith("\n")) added = added.slice(1); // a CRLF split in two
    this.raw = raw;
    const source = (this.source += added.replace(/\r\n?/g, "\n"));
    const boundary = this.scan(source);
    if (boundary > this.committed) {
      this.dropTail();
      this.container.append(renderMarkdown(source.slice(this.committed, boundary), this.doc));
      this.committed = boundary;
    }
    this.renderTail(source.slice(this.committed));
  }

  /** Scan the complete lines not scanned yet; returns where the finished blocks end. */
  scan(/** @type {string} */ source) {
    let boundary = this.committed;
    let start = this.scanned;
    for (let end = source.indexOf("\n", start); end !== -1; end = source.indexOf("\n", start)) {
      const line = source.slice(start, end);
      const block = this.block;
      if (block?.startsWith("fence:")) {
        if (line.trim() === block.slice(6)) [this.block, boundary] = [null, end + 1];
      } else {
        const kind = lineKind(line);
        const continues =
          (block === "text" && kind === "text") ||
          ((block === "bullet" || block === "numbered" || block === "quote") && kind === block);
        if (!continues) {
          if (block !== null) boundary = start; // the open block ended before this line
          if (kind === "blank" || kind === "heading") [this.block, boundary] = [null, end + 1];
          else this.block = kind === "fence" ? `fence:${/** @type {RegExpExecArray} */ (FENCE.exec(line))[1]}` : kind;
        }
      }
      start = end + 1;
    }
    this.scanned = start;
    return boundary;
  }

  dropTail() {
    for (const node of this.tail) node.parentNode?.removeChild(node);
    this.tail = [];
    this.open = null;
  }

  /** @param {string} text the uncommitted end of the answer: at most one block */
  renderTail(text) {
    if (!text) return this.dropTail();
    const firstEnd = text.indexOf("\n");
    const fence = this.block?.startsWith("fence:") ? this.block.slice(6) : null;
    // While its closing line is being typed the fence is closed to the parser: not a growing block.
    const closing = fence !== null && text.slice(text.lastIndexOf("\n") + 1).trim() === fence;
    if (fence !== null && firstEnd !== -1 && !closing) return this.growCode(text, firstEnd);
    const lines = text.split("\n");
    const last = lines[lines.length - 1];
    const paragraph =
      (this.block === "text" || this.block === null) &&
      lines.slice(0, -1).every((line) => lineKind(line) === "text") &&
      (last === "" ? lines.length > 1 : lineKind(last) === "text");
    if (paragraph) return this.growParagraph(lines);
    this.dropTail();
    this.tail = [...renderMarkdown(text, this.doc).childNodes];
    this.container.append(...this.tail);
  }

  /** An open code fence: its text only grows. */
  growCode(/** @type {string} */ text, /** @type {number} */ firstEnd) {
    const firstLine = text.slice(0, firstEnd);
    const code = text.slice(firstEnd + 1);
    const open = this.open;
    if (open?.kind === "code" && open.firstLine === firstLine && code.startsWith(open.text)) {
      open.node.appendData(code.slice(open.text.length));
      open.text = code;
      return;
    }
    this.dropTail();
    const pre = /** @type {HTMLElement} */ (renderMarkdown(text, this.doc).firstChild);
    const codeElement = /** @type {HTMLElement} */ (pre.firstChild);
    const node = this.doc.createTextNode(code);
    codeElement.replaceChildren(node);
    this.container.append(pre);
    this.tail = [pre];
    this.open = { kind: "code", firstLine, text: code, node };
  }

  /**
   * An open paragraph: its finished lines, and a safe start of its last line, stay.
   * @param {string[]} lines its lines so far; only the last may be empty (nothing of it yet)
   */
  growParagraph(lines) {
    let open = this.open;
    if (open?.kind !== "paragraph") {
      this.dropTail();
      const p = this.doc.createElement("p");
      this.container.append(p);
      this.tail = [p];
      // done: lines rendered whole; cut: how much of line `done` is rendered; started: its <br> is in
      open = this.open = { kind: "paragraph", p, done: 0, cut: 0, started: false, pending: [] };
    }
    for (const node of open.pending) node.parentNode?.removeChild(node);
    open.pending = [];
    const lastIndex = lines.length - 1;
    while (open.done < lastIndex) {
      this.startLine(open);
      withInline(open.p, parseInline(lines[open.done].slice(open.cut)), this.doc);
      [open.done, open.cut, open.started] = [open.done + 1, 0, false];
    }
    const rest = lines[lastIndex].slice(open.cut);
    if (!rest) return;
    this.startLine(open);
    const cut = safeCut(rest);
    if (cut > 0) {
      withInline(open.p, parseInline(rest.slice(0, cut)), this.doc);
      open.cut += cut;
    }
    const before = open.p.childNodes.length;
    withInline(open.p, parseInline(rest.slice(cut)), this.doc);
    open.pending = [...open.p.childNodes].slice(before);
  }

  /** The line break before a paragraph's next line, once that line has begun. */
  startLine(/** @type {any} */ open) {
    if (open.started) return;
    if (open.done > 0) open.p.append(this.doc.createElement("br"));
    open.started = true;
  }
}

/**
 * The longest start of `text` (the open end of a line) whose inline parse no later text can
 * change: it ends right after a space, before which every span is finished and no character
 * outside a span could open one. Every inline pattern starts with one of OPENERS, the matcher
 * never starts inside a match it found, and a finished span with a character after it is
 * final (code and `__` spans look one character past their end).
 * @param {string} text
 * @returns {number}
 */
export function safeCut(text) {
  let cut = 0;
  let from = 0;
  const plain = (/** @type {number} */ to) => {
    for (let i = from; i < to; i += 1) {
      if (OPENERS.test(text[i])) return false;
      if (text[i] === " " && i + 1 < text.length) cut = i + 1;
    }
    return true;
  };
  for (const m of text.matchAll(INLINE)) {
    const start = m.index ?? 0;
    if (!plain(start)) return cut;
    from = start + m[0].length;
    if (from >= text.length) return cut;
  }
  plain(text.length);
  return cut;
}
