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

import { chromium } from "playwright-core";

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
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    // This machine has no network beyond loopback: keep chromium from trying.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
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
  ].join("\n\n");
  await ask(attack);
  const answer = page.locator(".message.assistant").last();
  await waitForState(answer, "done");
  await page.waitForTimeout(200); // an image error or onload would have fired by now

  assert.equal(await page.evaluate(() => window.__xss), undefined, "no injected script ran");
  for (const tag of ["img", "script", "svg", "iframe"]) {
    assert.equal(await page.locator(`#conversation ${tag}`).count(), 0, `no <${tag}> element in the page`);
  }
  const body = answer.locator(".body");
  assert.match((await body.textContent()) ?? "", /<img src=x onerror="window.__xss = 'img'">/);
  assert.equal(await body.locator("strong").textContent(), "Bold");
  assert.equal(await body.locator("p code").first().textContent(), "code");
  assert.equal(await body.locator("a").count(), 1, "only the https link is a link");
  assert.equal(await body.locator("a").getAttribute("href"), "https://example.com/x");
  assert.match((await body.locator("pre code").textContent()) ?? "", /^<iframe srcdoc=/);
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
    const { StreamingMarkdown, renderMarkdown } = await import("/static/markdown.js");
    const documents = [
      ...randomDocuments,
      "# Title\nSome *em* and **strong** and `code` and [a link](https://e.org/x) here.\n\n- one\n- two `x`\n1. first\n2. second\n> quoted **b**\n> more\n\n```py\nprint('hi')\n\nx = 1\n```\nafter the fence\n## Sub\ntext\n",
      "A line with **bold that runs on\nacross lines** and `code` then ``a`b`` and __under__score and my__snake__case and *x*y* end",
      "para one\n\n\npara two\n```\nunclosed code with ``` inside\n``` x\n# not a heading#\n#tag word - item\n- item\n  - nested\n>q",
      "[unsafe](javascript:x) [ok](https://a.b) [half](https://a\n*a* **b** `c` ***d*** _e_ __f__ ` g ` \\* \r\nwindows line\r\n\r\n2) two\n3. three",
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
    "  ", "\r\n", "\r", "\\*", "***", "x_y", "\t", "#"];
  const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  return Array.from({ length: count }, () =>
    Array.from({ length: 5 + Math.floor(next() * 60) }, () => pieces[Math.floor(next() * pieces.length)]).join(""),
  );
}

// The frame budget: a Markdown answer keeps 95 % of frames under 50 ms (three 60 Hz frames).
// One paragraph of 111,000 characters is laid out whole by Chromium on every change, which
// costs 17-33 ms here however little of it the page redraws (measured: p50 33 ms, p95 at the
// 50 ms vsync step, also before this change); its budget is 67 ms (four frames) -- no freezes --
// and the removed-characters check below is what proves only the end is redrawn.
for (const [model, what, budget] of [
  ["markdown", "a 20,000-token Markdown answer", 50],
  ["long-line", "a 20,000-token answer in one unbroken paragraph", 67],
]) {
  test(`${what} streams smoothly: 95th-percentile frame under ${budget} ms`, async () => {
    const question = model === "markdown" ? longMarkdown() : "go";
    await page.selectOption("#model", model);
    await ask(question);
    const answer = page.locator(".message.assistant").last();
    await answer.locator(".body").filter({ hasText: /\S/ }).waitFor();
    await page.evaluate(() => {
      const frames = (window.__frames = []);
      const tick = (/** @type {number} */ now) => {
        frames.push(now);
        if (!window.__stopFrames) requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
      // Text taken off the page while the answer streams: rendering it whole each frame takes
      // all of it off every time; rendering what changed takes off the unfinished end only.
      window.__removed = 0;
      new MutationObserver((records) => {
        for (const record of records) {
          for (const node of record.removedNodes) window.__removed += node.textContent?.length ?? 0;
        }
      }).observe(document.getElementById("conversation"), { subtree: true, childList: true });
    });
    await answer.and(page.locator('[data-state="done"]')).waitFor({ timeout: 60000 });
    const { frames, removed, length } = await page.evaluate(() => {
      window.__stopFrames = true;
      const body = document.querySelector(".message.assistant:last-of-type .body");
      return { frames: window.__frames, removed: window.__removed, length: body?.textContent?.length ?? 0 };
    });
    const gaps = frames.slice(1).map((t, i) => t - frames[i]).sort((a, b) => a - b);
    const p95 = gaps[Math.floor(gaps.length * 0.95)];
    console.log(`${model}: ${gaps.length} frames, p50 ${gaps[gaps.length >> 1].toFixed(1)} ms, p95 ${p95.toFixed(1)} ms, max ${gaps.at(-1)?.toFixed(1)} ms; ${removed} characters re-rendered for ${length} shown`);
    assert.ok(gaps.length > 100, `${gaps.length} frames while streaming`);
    assert.ok(p95 < budget, `95th-percentile frame time ${p95.toFixed(1)} ms (budget ${budget} ms)`);
    // Each piece of text is drawn a bounded number of times (while open, once more when its block
    // is final), not once per frame: a whole re-render per frame would take off ~frames × length / 2.
    assert.ok(removed < 2 * length, `${removed} characters re-rendered for an answer of ${length}`);
    if (model === "markdown") assert.equal(await answer.locator(".body pre").count(), 60);
  });
}

/** About 20,000 tokens of Markdown (~100 KB): headings, paragraphs, lists and code. */
function longMarkdown() {
  const parts = [];
  for (let i = 0; i < 60; i += 1) {
    parts.push(`## Part ${i}`);
    parts.push(`This is **paragraph ${i}** with \`inline code\`, *emphasis* and a [link](https://example.com/${i}). `.repeat(6));
    parts.push(["- first point", "- second point with `code`", "- third point"].join("\n"));
    parts.push("```js\n" + `function part${i}(x) {\n  return x * ${i};\n}\n`.repeat(3) + "```");
    parts.push("Closing words for this part, plain text that goes on for a while. ".repeat(4));
  }
  return parts.join("\n\n");
}

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

/**
 * @template T
 * @param {() => Promise<T | undefined>} probe
 * @param {number} ms
 * @returns {Promise<T>}
 */
async function waitUntil(probe, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`not true within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** @param {string} name */
function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through tests/e2e/test_web_page.py`);
  return value;
}
