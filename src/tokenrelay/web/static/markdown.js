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
