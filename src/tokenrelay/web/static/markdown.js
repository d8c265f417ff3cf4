// Markdown for model answers, over the vendored markdown-it (parsing) and highlight.js (code).
//
// Safety: markdown-it runs with `html: false` (raw HTML in an answer stays text), and its HTML
// renderer is not used at all: the DOM is built here from markdown-it's tokens with
// createElement and text nodes, for an allow-list of tags and attributes. No string from a
// model is ever parsed as HTML, highlighted code included (highlight.js's token tree is walked,
// its HTML output is not used). Links go to http(s) and mailto only; images only from safe
// `data:image/...` URLs (the page's CSP allows no other image source, and a remote image
// would tell a third party that the answer was read): any other image becomes a link.

import hljs from "./vendor/highlight.min.js";
import markdownit from "./vendor/markdown-it.min.js";

const LINK_URL = /^(https?:|mailto:)/i;
const IMAGE_DATA_URL = /^data:image\/(gif|png|jpeg|webp);/i;
/** A code fence's language, used as a class name: letters, digits and a few signs only. */
const LANGUAGE = /^[\w#+.-]{1,40}$/;

/**
 * Whether a URL from an answer may become a link (`image`: or an image's source).
 * @param {string} url
 * @param {boolean} [image]
 */
export function isSafeUrl(url, image = false) {
  const trimmed = url.trim();
  return LINK_URL.test(trimmed) || (image && IMAGE_DATA_URL.test(trimmed));
}

/** The page's markdown-it: CommonMark plus tables and strikethrough, URLs made links, no HTML. */
export const md = markdownit({ html: false, linkify: true, typographer: false });
// Refuses javascript:, vbscript:, file:, data: (but safe images) and relative URLs: such a
// link stays text. Which of link or image a data: URL may be is decided when rendering.
md.validateLink = (/** @type {string} */ url) => isSafeUrl(url, true);

/**
 * Render Markdown as DOM nodes (an allow-list of elements, text nodes, no HTML parsing).
 * @param {string} source
 * @param {Document} [doc]
 * @returns {DocumentFragment}
 */
export function renderMarkdown(source, doc = document) {
  return renderTokens(md.parse(source, {}), doc);
}

/** @typedef {ReturnType<typeof md.parse>[number]} Token */

/** Elements a block or inline token pair may open (markdown-it's type, without `_open`). */
const PAIRED = new Map([
  ["paragraph", "p"], ["blockquote", "blockquote"], ["bullet_list", "ul"], ["ordered_list", "ol"],
  ["list_item", "li"], ["table", "table"], ["thead", "thead"], ["tbody", "tbody"], ["tr", "tr"],
  ["th", "th"], ["td", "td"], ["strong", "strong"], ["em", "em"], ["s", "s"],
]);

/**
 * @param {Token[]} tokens markdown-it's block tokens (inline ones are their `children`)
 * @param {Document} [doc]
 * @returns {DocumentFragment}
 */
export function renderTokens(tokens, doc = document) {
  const fragment = doc.createDocumentFragment();
  appendTokens(fragment, tokens, doc);
  return fragment;
}

/** @param {Node} root @param {Token[]} tokens @param {Document} doc */
export function appendTokens(root, tokens, doc) {
  /** @type {Node[]} */
  const stack = [root];
  for (const token of tokens) {
    const parent = /** @type {Node} */ (stack.at(-1));
    if (token.nesting === 1) {
      const element = token.hidden ? null : openElement(token, doc);
      if (element) parent.appendChild(element);
      stack.push(element ?? parent); // a tight list's hidden paragraph: its text goes in the item
    } else if (token.nesting === -1) {
      if (stack.length > 1) stack.pop();
    } else {
      appendLeaf(parent, token, doc);
    }
  }
}

/** @param {Token} token @param {Document} doc @returns {HTMLElement | null} */
function openElement(token, doc) {
  const type = token.type.slice(0, -"_open".length);
  if (type === "heading") {
    // Answers sit inside the page: their headings start below the page's own.
    const level = Math.min(Number(token.tag.slice(1)) + 2, 6);
    return doc.createElement(`h${Number.isInteger(level) ? level : 6}`);
  }
  if (type === "link") {
    const href = token.attrGet("href") ?? "";
    if (!isSafeUrl(href)) return doc.createElement("span"); // a data: image URL as a link
    const link = doc.createElement("a");
    link.href = href;
    const title = token.attrGet("title");
    if (title) link.title = title;
    link.rel = "noopener noreferrer nofollow";
    link.target = "_blank";
    return link;
  }
  const tag = PAIRED.get(type);
  if (!tag) return doc.createElement("span"); // a token type this page does not know
  const element = doc.createElement(tag);
  if (type === "ordered_list") {
    const start = Number(token.attrGet("start") ?? 1);
    if (Number.isSafeInteger(start) && start !== 1) /** @type {HTMLOListElement} */ (element).start = start;
  } else if (type === "th" || type === "td") {
    // markdown-it sets `style="text-align:..."`; the page's CSP allows no inline style.
    const align = /text-align:(left|right|center)/.exec(token.attrGet("style") ?? "");
    if (align) element.className = `align-${align[1]}`;
  }
  return element;
}

/** @param {Node} parent @param {Token} token @param {Document} doc */
function appendLeaf(parent, token, doc) {
  switch (token.type) {
    case "inline":
      appendTokens(parent, token.children ?? [], doc);
      return;
    case "text":
    case "text_special":
    case "html_inline": // never made with html: false; text if it ever were
    case "html_block":
      parent.appendChild(doc.createTextNode(token.content));
      return;
    case "softbreak":
      parent.appendChild(doc.createTextNode("\n"));
      return;
    case "hardbreak":
      parent.appendChild(doc.createElement("br"));
      return;
    case "code_inline": {
      const code = doc.createElement("code");
      code.textContent = token.content;
      parent.appendChild(code);
      return;
    }
    case "hr":
      parent.appendChild(doc.createElement("hr"));
      return;
    case "fence":
    case "code_block":
      parent.appendChild(codeBlock(token.content, languageOf(token.info), doc).block);
      return;
    case "image":
      parent.appendChild(image(token, doc));
      return;
    default:
      if (token.content) parent.appendChild(doc.createTextNode(token.content));
  }
}

/** @param {Token} token @param {Document} doc */
function image(token, doc) {
  const src = token.attrGet("src") ?? "";
  const alt = (token.children ?? []).map((/** @type {Token} */ child) => child.content).join("");
  if (isSafeUrl(src, true) && !isSafeUrl(src)) {
    const img = doc.createElement("img");
    img.src = src;
    img.alt = alt;
    return img;
  }
  // A remote image is shown as a link to it: loading it would tell its server the answer was read.
  const link = doc.createElement("a");
  link.href = src;
  link.rel = "noopener noreferrer nofollow";
  link.target = "_blank";
  link.className = "image-link";
  link.textContent = `image: ${alt || src}`;
  return link;
}

/** @param {string} info a fence's info string */
export function languageOf(info) {
  const word = info.trim().split(/\s+/, 1)[0] ?? "";
  return LANGUAGE.test(word) ? word.toLowerCase() : "";
}

/**
 * A code block: a header with its language and a Copy button, then `pre > code`, highlighted
 * when highlight.js knows the language.
 * @param {string} text
 * @param {string} lang
 * @param {Document} doc
 * @param {boolean} [highlight]
 */
export function codeBlock(text, lang, doc, highlight = true) {
  const block = doc.createElement("div");
  block.className = "code-block";
  const head = block.appendChild(doc.createElement("div"));
  head.className = "code-head";
  const label = head.appendChild(doc.createElement("span"));
  label.className = "code-lang";
  label.textContent = lang || "text";
  const copy = head.appendChild(doc.createElement("button"));
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", `Copy ${lang || "the"} code`);
  const pre = block.appendChild(doc.createElement("pre"));
  const code = pre.appendChild(doc.createElement("code"));
  if (lang) code.dataset.lang = lang;
  fillCode(code, text, lang, doc, highlight);
  return { block, code };
}

/**
 * @param {HTMLElement} code
 * @param {string} text
 * @param {string} lang
 * @param {Document} doc
 * @param {boolean} highlight
 */
export function fillCode(code, text, lang, doc, highlight) {
  const root = highlight && lang ? highlightTree(text, lang) : null;
  if (root === null) {
    code.className = "";
    code.replaceChildren(doc.createTextNode(text));
    return;
  }
  code.className = `hljs language-${lang}`;
  code.replaceChildren();
  appendHighlight(code, root, doc);
}

/**
 * highlight.js's token tree for `text` (strings and `{scope, children}` nodes), or null when
 * the language is unknown. The tree, not the HTML string, so nothing is parsed as HTML.
 * @param {string} text
 * @param {string} lang
 * @returns {{scope?: string, children: any[]} | null}
 */
export function highlightTree(text, lang) {
  if (!hljs.getLanguage(lang)) return null;
  try {
    const result = /** @type {any} */ (hljs.highlight(text, { language: lang, ignoreIllegals: true }));
    const root = result._emitter?.rootNode;
    return root && Array.isArray(root.children) ? root : null;
  } catch {
    return null; // a grammar that fails on odd input: plain text
  }
}

/** @param {Node} parent @param {{scope?: string, children: any[]}} node @param {Document} doc */
function appendHighlight(parent, node, doc) {
  for (const /** @type {any} */ child of node.children) {
    if (typeof child === "string") {
      parent.appendChild(doc.createTextNode(child));
    } else if (child && Array.isArray(child.children)) {
      const span = doc.createElement("span");
      if (typeof child.scope === "string") span.className = scopeClass(child.scope);
      parent.appendChild(span);
      appendHighlight(span, child, doc);
    }
  }
}

/** highlight.js's class names for a scope ("title.function" → "hljs-title function_"). @param {string} scope */
function scopeClass(scope) {
  if (scope.startsWith("language:")) return `language-${scope.slice(9)}`.replace(/[^\w-]/g, "");
  const [first, ...rest] = scope.split(".");
  return [`hljs-${first}`, ...rest.map((piece, i) => `${piece}${"_".repeat(i + 1)}`)]
    .join(" ")
    .replace(/[^\w -]/g, "");
}

/**
 * Copy buttons of code blocks under `root` put their block's code on the clipboard.
 * @param {HTMLElement} root
 */
export function handleCopyButtons(root) {
  root.addEventListener("click", async (event) => {
    const button = /** @type {HTMLElement} */ (event.target).closest?.("button.copy");
    if (!(button instanceof HTMLButtonElement) || !root.contains(button)) return;
    const code = button.closest(".code-block")?.querySelector("pre code");
    if (!code) return;
    try {
      await navigator.clipboard.writeText(code.textContent ?? "");
      button.textContent = "Copied";
    } catch {
      button.textContent = "Copy failed";
    }
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
}
