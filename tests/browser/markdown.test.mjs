// The page's Markdown parser, without a browser (the DOM side is tested in chat_page.test.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";

import { parseInline, parseMarkdown } from "../../src/tokenrelay/web/static/markdown.js";

test("blocks: headings, lists, quotes, code fences, paragraphs with line breaks", () => {
  const blocks = parseMarkdown("# Title\n\n- a\n- b\n\n1. one\n2) two\n\n> said\n\n```py\nx = 1\n```\nline 1\nline 2");
  assert.deepEqual(
    blocks.map((b) => b.kind),
    ["heading", "list", "list", "quote", "code", "paragraph"],
  );
  assert.deepEqual(blocks[1], { kind: "list", ordered: false, items: [[{ kind: "text", text: "a" }], [{ kind: "text", text: "b" }]] });
  assert.equal(blocks[2].kind === "list" && blocks[2].ordered, true);
  assert.deepEqual(blocks[4], { kind: "code", lang: "py", text: "x = 1" });
  assert.equal(blocks[5].kind === "paragraph" && blocks[5].lines.length, 2);
});

test("an unclosed fence while tokens still arrive is code up to the end", () => {
  assert.deepEqual(parseMarkdown("```\nlet a = '<b>'"), [{ kind: "code", lang: "", text: "let a = '<b>'" }]);
});

test("inline: code, bold, italic, links", () => {
  assert.deepEqual(parseInline("a `x*y*` **b** *c* [d](https://e.org/f)"), [
    { kind: "text", text: "a " },
    { kind: "code", text: "x*y*" },
    { kind: "text", text: " " },
    { kind: "strong", children: [{ kind: "text", text: "b" }] },
    { kind: "text", text: " " },
    { kind: "em", children: [{ kind: "text", text: "c" }] },
    { kind: "text", text: " " },
    { kind: "link", href: "https://e.org/f", children: [{ kind: "text", text: "d" }] },
  ]);
});

test("links to anything but http(s) and mailto stay text", () => {
  for (const href of ["javascript:alert(1)", "JAVASCRIPT:alert(1)", "data:text/html,x", "vbscript:x", "//evil.example"]) {
    const spans = parseInline(`[x](${href})`);
    assert.ok(spans.every((s) => s.kind === "text"), href);
    assert.equal(spans.map((s) => (s.kind === "text" ? s.text : "")).join(""), `[x](${href})`);
  }
});

test("underscores inside words are not emphasis", () => {
  assert.deepEqual(parseInline("my__snake__case"), [{ kind: "text", text: "my__snake__case" }]);
  assert.deepEqual(parseInline("a __b__ c")[1], { kind: "strong", children: [{ kind: "text", text: "b" }] });
});

test("HTML in the source is plain text to the parser", () => {
  assert.deepEqual(parseMarkdown("<img src=x onerror=alert(1)>"), [
    { kind: "paragraph", lines: [[{ kind: "text", text: "<img src=x onerror=alert(1)>" }]] },
  ]);
});
