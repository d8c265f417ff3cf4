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
