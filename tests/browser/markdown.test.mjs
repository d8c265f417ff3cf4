// The page's Markdown module without a browser: the configured markdown-it (no HTML, safe
// links only), where a streamed answer's blocks become final, how much of a growing
// paragraph is final, and highlight.js's token tree. The DOM side (rendering, streaming at
// every length, hostile answers in the page) is tested in chat_page.test.mjs.
import assert from "node:assert/strict";
import { test } from "node:test";

import { finishedLines, stableCut } from "../../src/tokenrelay/web/static/markdown-stream.js";
import { highlightTree, isSafeUrl, md } from "../../src/tokenrelay/web/static/markdown.js";

/** @param {string} source */
const inline = (source) => md.parseInline(source, {})[0].children ?? [];

test("HTML in an answer is text to the parser: no html token, the source kept", () => {
  const source = "<img src=x onerror=alert(1)>\n\n<script>alert(1)</script> and <b onclick=x>b</b>\n\n<div>\nblock\n</div>";
  const tokens = md.parse(source, {});
  const all = tokens.flatMap((t) => [t, ...(t.children ?? [])]);
  assert.deepEqual(all.filter((t) => t.type.startsWith("html")), []);
  const text = all.filter((t) => t.type === "text").map((t) => t.content).join("");
  for (const piece of ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "<b onclick=x>b</b>", "<div>"]) {
    assert.ok(text.includes(piece), piece);
  }
});

test("links to anything but http(s) and mailto stay text", () => {
  for (const href of ["javascript:alert(1)", "JAVASCRIPT:alert(1)", " javascript:x", "data:text/html,x", "vbscript:x",
    "file:///etc/passwd", "//evil.example", "/relative", "#frag", "data:image/svg+xml;base64,PHN2Zz4="]) {
    const tokens = inline(`[x](${href})`);
    assert.ok(tokens.every((t) => t.type === "text"), href);
    assert.equal(tokens.map((t) => t.content).join(""), `[x](${href})`);
  }
  assert.equal(inline("<javascript:alert(1)>").some((t) => t.type === "link_open"), false, "autolink");
  assert.equal(inline("javascript:alert(1)").some((t) => t.type === "link_open"), false, "bare text");
});

test("web and mail links are links; bare URLs and addresses too (linkify)", () => {
  const hrefs = (/** @type {string} */ source) => inline(source).filter((t) => t.type === "link_open").map((t) => t.attrGet("href"));
  assert.deepEqual(hrefs("[a](https://e.org/x) [b](http://e.org) [c](mailto:a@e.org)"), ["https://e.org/x", "http://e.org", "mailto:a@e.org"]);
  assert.deepEqual(hrefs("see https://e.org/path?q=1. and write to a@e.org"), ["https://e.org/path?q=1", "mailto:a@e.org"]);
});

test("only safe data: images pass: png, gif, jpeg, webp", () => {
  assert.ok(isSafeUrl("data:image/png;base64,iVBORw0KGgo=", true));
  assert.ok(!isSafeUrl("data:image/png;base64,iVBORw0KGgo="), "not as a link");
  assert.ok(!isSafeUrl("data:image/svg+xml;base64,PHN2Zz4=", true));
  assert.ok(isSafeUrl("https://e.org/a.png", true) && isSafeUrl("HTTPS://E.ORG"));
  const [image] = inline("![alt](data:image/gif;base64,R0lGODlh)");
  assert.equal(image.type, "image");
});

test("tables, strikethrough, nested lists and fences are parsed", () => {
  const types = md.parse("| a | b |\n|:-|-:|\n| 1 | ~~2~~ |\n\n1. x\n   - y\n\n```py\nx = 1\n```\n", {}).map((t) => t.type);
  for (const type of ["table_open", "th_open", "td_open", "ordered_list_open", "bullet_list_open", "fence"]) {
    assert.ok(types.includes(type), type);
  }
  assert.ok(md.parse("~~gone~~", {})[1].children?.some((t) => t.type === "s_open"));
});

test("a streamed answer's blocks are final once a later block has begun for good", () => {
  const finished = (/** @type {string} */ text) => finishedLines(md.parse(text, {}), text);
  assert.equal(finished("para\n\nnext"), 2, "after a blank line a new block is final at once");
  assert.equal(finished("# Title\n\nbody"), 2);
  assert.equal(finished("text\n#"), 0, "`#` may still become `#tag`, a line of the paragraph");
  assert.equal(finished("text\n#\n"), 1, "a complete `#` line is a heading");
  assert.equal(finished("- a\n\n1"), 0, "`1` may still become `1.`: digits wait (a list item may continue a list above)");
  assert.equal(finished("- a\n\nb"), 2);
  assert.equal(finished("para\n| a | b |\n|---|---|"), 0, "a table is one only once its delimiter row is complete");
  assert.equal(finished("para\n| a | b |\n|---|---|\n"), 1);
  assert.equal(finished("```\ncode\n\nmore"), 0, "an open fence is one block");
  assert.equal(finished("only\nlines\nof one paragraph\n"), 0);
});

test("how much of a growing paragraph no later text can change", () => {
  assert.equal(stableCut("plain words and more"), "plain words and ".length);
  assert.equal(stableCut("This is **bold** and `code` then `inl"), "This is **bold** and `code` then ".length);
  assert.equal(stableCut("an *open emphasis that goes on"), "an ".length, "not past a delimiter still open");
  assert.equal(stableCut("word"), 0);
  assert.equal(stableCut("ends with a space "), "ends with a ".length, "a trailing space may end a line (a hard break)");
});

test("highlight.js gives a token tree (text, not HTML); unknown languages are plain", () => {
  const tree = highlightTree("const a = '<b>'; // hi", "js");
  assert.ok(tree);
  const flat = (/** @type {any} */ node) => node.children.map((c) => (typeof c === "string" ? c : flat(c))).join("");
  assert.equal(flat(tree), "const a = '<b>'; // hi", "the text unchanged, unescaped: it becomes text nodes");
  const scopes = (/** @type {any} */ node) => node.children.flatMap((c) => (typeof c === "string" ? [] : [c.scope, ...scopes(c)]));
  assert.deepEqual(scopes(tree), ["keyword", "string", "comment"]);
  assert.equal(highlightTree("x", "no-such-language"), null);
});
