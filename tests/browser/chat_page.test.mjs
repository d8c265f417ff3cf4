// The chat page in a real browser (Debian's chromium driven by playwright-core) against a real
// gateway and the simulated upstream. Started by tests/e2e/test_web_page.py, which passes:
//   TOKENRELAY_URL       the gateway (serving the page at /)
//   TOKENRELAY_SIM_URL   the simulated upstream (its /_stats shows when a connection closed)
//   ARTIFACT_DIR         where the screenshot of a finished conversation goes
//   CHROMIUM             the browser binary
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, beforeEach, test } from "node:test";

import { launchChromium, need, waitUntil } from "./support.mjs";

const gatewayUrl = need("TOKENRELAY_URL");
const simUrl = need("TOKENRELAY_SIM_URL");
const artifactDir = need("ARTIFACT_DIR");

/** @type {import("playwright-core").Browser} */
let browser;
/** @type {import("playwright-core").Page} */
let page;
/** @type {string[]} */
let consoleErrors;

before(async () => {
  browser = await launchChromium();
});
after(async () => browser?.close());
beforeEach(async () => {
  page = await (await browser.newContext({ viewport: { width: 1000, height: 760 } })).newPage();
  page.on("pageerror", (error) => assert.fail(`uncaught error in the page: ${error.message}`));
  consoleErrors = [];
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  await page.goto(gatewayUrl);
  await page.locator("#model option").first().waitFor({ state: "attached" });
});

test("the model picker lists the gateway's models, default first", async () => {
  const options = await page.locator("#model option").evaluateAll((els) => els.map((e) => e.textContent));
  const listed = await (await fetch(`${gatewayUrl}/v1/models`)).json();
  assert.deepEqual(options, listed.data.map((/** @type {{id: string}} */ m) => m.id));
  assert.equal(await page.locator("#model").inputValue(), "fast");
});

test("tokens appear as they arrive, then usage and time to first token", async () => {
  await page.selectOption("#model", "paced"); // 20 tokens at 50 per second
  // Every distinct text the answer shows while it streams, seen by the page itself.
  await page.evaluate(() => {
    const seen = (window.__answerTexts = []);
    new MutationObserver(() => {
      const answer = document.querySelector(".message.assistant:last-of-type");
      const text = answer?.querySelector(".body")?.textContent ?? "";
      if (answer?.getAttribute("data-state") === "streaming" && text && text !== seen.at(-1)) seen.push(text);
    }).observe(document.getElementById("conversation"), { subtree: true, childList: true, characterData: true });
  });
  await ask("Tell me something");
  const answer = page.locator(".message.assistant").last();
  await waitForState(answer, "done");

  const texts = await page.evaluate(() => window.__answerTexts);
  const final = await answer.locator(".body").textContent();
  assert.ok(texts.length >= 3, `the answer grew in ${texts.length} visible steps, want at least 3`);
  assert.ok(texts.every((t, i) => i === 0 || t.startsWith(texts[i - 1].trimEnd())), "each step extends the last");
  assert.ok(final && final.length > texts[0].length);
  const meta = await answer.locator(".meta").textContent();
  assert.match(meta ?? "", /\d+ prompt \+ 20 completion tokens · first token \d+ ms · \d+\.\d\d s/);
});

test("a model served by an Anthropic-protocol upstream streams on the page too", async () => {
  await page.selectOption("#model", "claude-echo"); // the simulator, spoken to as Anthropic's API
  await ask("Hello from the Messages API");
  const answer = page.locator(".message.assistant").last();
  await waitForState(answer, "done");
  assert.equal(await answer.locator(".body").textContent(), "Hello from the Messages API");
  assert.match((await answer.locator(".meta").textContent()) ?? "", /\d+ prompt \+ \d+ completion tokens/);
});

test("Stop ends the answer and the gateway closes the upstream connection", async () => {
  await page.selectOption("#model", "slow"); // 2000 tokens at 50 per second: 40 s if not stopped
  const response = page.waitForResponse((r) => r.url().endsWith("/chat"));
  await ask("Tell me a long story");
  const requestId = (await response).headers()["x-request-id"];
  const answer = page.locator(".message.assistant").last();
  await answer.locator(".body").filter({ hasText: /\S+ \S+ \S+/ }).waitFor();

  await page.click("#stop");
  await waitForState(answer, "stopped");
  assert.match((await answer.locator(".meta").textContent()) ?? "", /^stopped · first token/);
  assert.ok(await page.locator("#send").isEnabled(), "the page is ready for the next question");

  const upstream = await waitUntil(async () => {
    const stats = await (await fetch(`${simUrl}/_stats`)).json();
    return stats.requests.find((/** @type {any} */ r) => r.request_id === requestId && r.ended_at !== null);
  }, 5000);
  assert.equal(upstream.end, "client_closed", "the upstream call was aborted, not left to finish");
  assert.ok(upstream.chunks_sent < 500, `the upstream stopped early (sent ${upstream.chunks_sent} chunks)`);
});

for (const [model, shown] of [
  ["error500", /The model provider is unavailable\. \(upstream_unavailable: /],
  ["ratelimit", /Rate limited\. Try again in 7 s\. \(upstream_rate_limited: /],
  ["midstream-error", /The model provider broke off the answer\. \(upstream_protocol_error: /],
]) {
  test(`an upstream failure (${model}) shows a readable message`, async () => {
    await page.selectOption("#model", model);
    await ask("hi");
    const answer = page.locator(".message.assistant").last();
    await waitForState(answer, "error");
    assert.match((await answer.getByRole("alert").textContent()) ?? "", shown);
  });
}

test("a budget refusal and a lost connection show readable messages", async () => {
  // Budgets come with API keys (a later issue); the page's handling is checked with the
  // gateway's documented error body, served here in place of the gateway's answer.
  await page.route("**/chat", (route) =>
    route.fulfill({
      status: 429,
      contentType: "application/json",
      body: JSON.stringify({ error: { message: "token budget exhausted", type: "rate_limit_error", param: null, code: "budget_exceeded" } }),
    }),
  );
  await ask("hi");
  await waitForState(page.locator(".message.assistant").last(), "error");
  assert.match((await page.getByRole("alert").last().textContent()) ?? "", /This key's budget is used up\./);

  await page.unroute("**/chat");
  await page.route("**/chat", (route) => route.abort("connectionreset"));
  await ask("hi again");
  await waitForState(page.locator(".message.assistant").last(), "error");
  assert.match((await page.getByRole("alert").last().textContent()) ?? "", /Disconnected from the gateway\./);
});

test("the API key stays in the browser and is sent as a bearer token", async () => {
  await page.fill("#api-key", "tr-test-key-42");
  await page.locator("#api-key").dispatchEvent("change");
  await page.selectOption("#model", "echo");
  const request = page.waitForRequest((r) => r.url().endsWith("/chat"));
  await ask("key check");
  assert.equal((await request).headers()["authorization"], "Bearer tr-test-key-42");
  await waitForState(page.locator(".message.assistant").last(), "done");
  await page.reload();
  assert.equal(await page.locator("#api-key").inputValue(), "tr-test-key-42");
});

test("model output cannot inject HTML; Markdown renders as elements", async () => {
  await page.selectOption("#model", "echo"); // answers with the question, exactly
  const attack = [
    "**Bold** and `code` and [a link](https://example.com/x).",
    `<img src=x onerror="window.__xss = 'img'"> <script>window.__xss = 'script'</script>`,
    "[click me](javascript:window.__xss='link') <svg onload=\"window.__xss='svg'\">",
    "```html\n<iframe srcdoc=\"<script>parent.__xss='iframe'</script>\"></iframe>\n```",
    // Links and images with other schemes, as Markdown, autolinks and bare text.
    "[upper](JAVASCRIPT:window.__xss='upper') [tab](java\tscript:window.__xss='tab') [ent](&#106;avascript:window.__xss='ent')",
    "[vb](vbscript:msgbox(1)) [data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) [file](file:///etc/passwd) [rel](//evil.example/x)",
    "<javascript:window.__xss='autolink'> javascript:window.__xss='bare' <http://example.com/\" onmouseover=\"window.__xss='attr'>",
    "![pic](javascript:window.__xss='image') ![remote](https://example.com/track.png \"t\") ![svg](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
    "[titled](https://example.com/t \"x\\\" onmouseover=\\\"window.__xss='title'\")",
    "| <b>cell</b> | <i onclick=\"window.__xss='cell'\">x</i> |\n|---|---|\n| <style>body{display:none}</style> | &lt;script&gt; |",
    "```\" onmouseover=\"window.__xss='lang'\n<b>code</b>\n```",
  ].join("\n\n");
  await ask(attack);
  const answer = page.locator(".message.assistant").last();
  await waitForState(answer, "done");
  await page.waitForTimeout(200); // an image error or onload would have fired by now
  await answer.locator(".body").hover(); // any mouseover handler would run now

  assert.equal(await page.evaluate(() => window.__xss), undefined, "no injected script ran");
  for (const tag of ["img", "script", "svg", "iframe", "style", "b", "i", "object", "embed", "form", "input"]) {
    assert.equal(await page.locator(`#conversation .body ${tag}`).count(), 0, `no <${tag}> element from the answer`);
  }
  // Every element of the answer is one the renderer makes, with only its own attributes.
  const allowed = {
    P: [], STRONG: [], EM: [], CODE: ["class", "data-lang"], PRE: [], A: ["href", "rel", "target", "title", "class"],
    TABLE: [], THEAD: [], TBODY: [], TR: [], TH: ["class"], TD: ["class"], DIV: ["class"], SPAN: ["class"],
    BUTTON: ["type", "class", "aria-label"], H3: [], H4: [], H5: [], H6: [], UL: [], OL: ["start"], LI: [], BR: [], HR: [],
    BLOCKQUOTE: [], S: [],
  };
  const elements = await answer.locator(".body *").evaluateAll((els) =>
    els.map((el) => ({ tag: el.tagName, attributes: el.getAttributeNames() })),
  );
  for (const { tag, attributes } of elements) {
    assert.ok(tag in allowed, `<${tag}> in the answer`);
    for (const name of attributes) assert.ok(allowed[tag].includes(name), `<${tag} ${name}> in the answer`);
  }
  const links = await answer.locator(".body a").evaluateAll((els) =>
    els.map((a) => ({ href: a.getAttribute("href"), rel: a.getAttribute("rel"), target: a.getAttribute("target"), text: a.textContent })),
  );
  assert.deepEqual(links.map((l) => l.href), [
    "https://example.com/x", "http://example.com/", "https://example.com/track.png", "https://example.com/t",
  ], "only web links are links (a remote image is a link to it, not an image; the quote ends the bare URL)");
  for (const link of links) {
    assert.equal(link.rel, "noopener noreferrer nofollow");
    assert.equal(link.target, "_blank");
  }
  const body = answer.locator(".body");
  const text = (await body.textContent()) ?? "";
  assert.match(text, /<img src=x onerror="window.__xss = 'img'">/);
  assert.match(text, /\[click me\]\(javascript:window.__xss='link'\)/, "a refused link stays text");
  assert.match(text, /javascript:window.__xss='bare'/);
  assert.equal(await body.locator("strong").first().textContent(), "Bold");
  assert.equal(await body.locator("p code").first().textContent(), "code");
  assert.match((await body.locator("pre code").first().textContent()) ?? "", /^<iframe srcdoc=/);
  assert.equal(await body.locator("pre code").last().textContent(), "<b>code</b>\n");
  assert.equal(await body.locator("th").first().textContent(), "<b>cell</b>");
  assert.equal(await body.locator("td").first().textContent(), "<style>body{display:none}</style>");
  assert.ok(await page.locator("body").isVisible(), "no style from the answer applies");
});

test("the page loads with no console error, a favicon included", async () => {
  const icon = await fetch(`${gatewayUrl}/favicon.ico`);
  assert.equal(icon.status, 200);
  assert.equal(icon.headers.get("content-type"), "image/x-icon");
  await page.reload();
  await page.locator("#model option").first().waitFor({ state: "attached" });
  await page.waitForTimeout(300); // a missing icon is reported after the load
  assert.deepEqual(consoleErrors, []);
});

test("a long unbroken word wraps inside its bubble", async () => {
  await page.selectOption("#model", "echo");
  const word = "https://example.com/" + "x".repeat(600);
  await ask(word);
  const answer = page.locator(".message.assistant").last();
  await waitForState(answer, "done");
  for (const bubble of [page.locator(".message.user").last(), answer]) {
    const [scrollWidth, clientWidth] = await bubble.evaluate((el) => [el.scrollWidth, el.clientWidth]);
    assert.ok(scrollWidth <= clientWidth, `content ${scrollWidth}px wide in a ${clientWidth}px bubble`);
  }
});

test("New chat while an answer streams: the old answer stays out of the new conversation", async () => {
  await page.selectOption("#model", "slow");
  await ask("first question");
  const first = page.locator(".message.assistant").last();
  await first.locator(".body").filter({ hasText: /\S+ \S+ \S+/ }).waitFor();
  await page.click("#new-chat");
  assert.equal(await page.locator(".message").count(), 0);
  await page.selectOption("#model", "echo");
  const request = page.waitForRequest((r) => r.url().endsWith("/chat"));
  await ask("second question");
  assert.deepEqual((await request).postDataJSON().messages, [{ role: "user", content: "second question" }]);
  await waitForState(page.locator(".message.assistant").last(), "done");
  assert.equal(await page.locator(".message").count(), 2, "only the new question and its answer");
});

test("streamed Markdown renders exactly as the whole text would, at every length", async () => {
  const mismatches = await page.evaluate(async (randomDocuments) => {
    // @ts-ignore -- a module of the page, imported in the page
    const { renderMarkdown } = await import("/static/markdown.js");
    const { StreamingMarkdown } = await import("/static/markdown-stream.js");
    const documents = [
      ...randomDocuments,
      "# Title\nSome *em* and **strong** and `code` and [a link](https://e.org/x) here.\n\n- one\n- two `x`\n1. first\n2. second\n> quoted **b**\n> more\n\n```py\nprint('hi')\n\nx = 1\n```\nafter the fence\n## Sub\ntext\n",
      "A line with **bold that runs on\nacross lines** and `code` then ``a`b`` and __under__score and my__snake__case and *x*y* end",
      "para one\n\n\npara two\n```\nunclosed code with ``` inside\n``` x\n# not a heading#\n#tag word - item\n- item\n  - nested\n>q",
      "[unsafe](javascript:x) [ok](https://a.b) [half](https://a\n*a* **b** `c` ***d*** _e_ __f__ ` g ` \\* \r\nwindows line\r\n\r\n2) two\n3. three",
      "| Name | Value |\n|:-----|------:|\n| a | **1** |\n| b | `2` |\n\nafter\n\n1. one\n   - nested *x*\n   - nested y\n2. two\n\n1. again\n\n    indented code\n\ntext\n===\nmore text\n---\n",
      "A long paragraph with **bold** and *em* and `code` and a [link](https://e.org/x) and ~~gone~~ ".repeat(8) + "end\n\nnext",
    ];
    const found = [];
    for (const doc of documents) {
      const streamed = document.createElement("div");
      const markdown = new StreamingMarkdown(streamed);
      for (let end = 0; end <= doc.length; end += 1) {
        const prefix = doc.slice(0, end);
        markdown.update(prefix);
        const whole = document.createElement("div");
        whole.append(renderMarkdown(prefix));
        if (streamed.innerHTML !== whole.innerHTML) {
          found.push({ prefix, streamed: streamed.innerHTML, whole: whole.innerHTML });
          break;
        }
      }
    }
    return found;
  }, randomMarkdown(300, 11));
  assert.deepEqual(mismatches, []);
});

/**
 * Seeded random documents made of Markdown's building blocks, in every order.
 * @param {number} count @param {number} seed
 */
function randomMarkdown(count, seed) {
  const pieces = ["a", "b ", " ", "\n", "\n\n", "*", "**", "_", "__", "`", "``", "```", "```py\n", "~~~\n",
    "# ", "## ", "- ", "1. ", "2) ", "> ", "[x](https://e.org)", "[y](javascript:z)", "[", "](", ")", "word ",
    "  ", "\r\n", "\r", "\\*", "***", "x_y", "\t", "#", "| a | b |\n", "|---|:-:|\n", "| 1 | 2 |\n", "    ",
    "~~", "https://e.org/p ", "<b>", "&amp;", "1", "-", "===\n", "---\n"];
  const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  return Array.from({ length: count }, () =>
    Array.from({ length: 5 + Math.floor(next() * 60) }, () => pieces[Math.floor(next() * pieces.length)]).join(""),
  );
}

// The frame budget of a long Markdown answer is measured in chat_console.test.mjs.

test("a screenshot of a finished conversation", async () => {
  await page.selectOption("#model", "echo");
  await ask("What does tokenrelay do?");
  await waitForState(page.locator(".message.assistant").last(), "done");
  await page.selectOption("#model", "paced");
  await ask("And tell me more, with **Markdown**.");
  await waitForState(page.locator(".message.assistant").last(), "done");
  mkdirSync(artifactDir, { recursive: true });
  await page.screenshot({ path: join(artifactDir, "chat-page.png"), fullPage: true });
});

/** @param {string} question */
async function ask(question) {
  await page.fill("#prompt", question);
  await page.press("#prompt", "Enter");
}

/** @param {import("playwright-core").Locator} answer @param {string} state */
async function waitForState(answer, state) {
  await answer.and(page.locator(`[data-state="${state}"]`)).waitFor({ timeout: 15000 });
}
