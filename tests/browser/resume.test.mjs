// The chat page with resumable streams, in a real browser (Debian's chromium driven by
// playwright-core), against a gateway with Redis, seen through a TCP proxy that the test cuts.
// Started by test_chat_page_resumes_and_stops_resumable_streams in tests/e2e/test_web_page.py,
// which passes:
//   TOKENRELAY_RESUME_URL   the proxy in front of the gateway (serving the page at /)
//   TOKENRELAY_PROXY_SWITCH the proxy's switch: POST /cut (drop every connection, refuse new
//                           ones), POST /restore (accept again)
//   TOKENRELAY_SIM_URL      the simulated upstream (its /_stats shows when a connection closed)
//   TOKENRELAY_RESULT_FILE  one JSON line per test that ran, for the Python side to check
//                           (the ledger) and to know the tests ran
//   ARTIFACT_DIR            where the screenshot of an answer being resumed goes
//   CHROMIUM                the browser binary
// Skipped when TOKENRELAY_RESUME_URL is not set (test_chat_page_in_chromium runs every file here
// against a gateway without Redis).
import assert from "node:assert/strict";
import { appendFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, beforeEach, describe, test } from "node:test";

import { launchChromium, need, waitUntil } from "./support.mjs";

const pageUrl = process.env.TOKENRELAY_RESUME_URL;
const KEY = "tr-resume-test-key";

describe("resumable streams on the chat page", { skip: !pageUrl && "TOKENRELAY_RESUME_URL is not set" }, () => {
  const switchUrl = need("TOKENRELAY_PROXY_SWITCH");
  const simUrl = need("TOKENRELAY_SIM_URL");
  const resultFile = need("TOKENRELAY_RESULT_FILE");
  const artifactDir = need("ARTIFACT_DIR");

  /** @type {import("playwright-core").Browser} */
  let browser;
  /** @type {import("playwright-core").Page} */
  let page;
  /** Every request the page sent to /v1/streams/..., when, and how it ended. */
  /** @type {{method: string, url: string, headers: Record<string, string>, at: number, failed?: string}[]} */
  let streamRequests;
  /** @type {string[]} */
  let warnings;

  before(async () => {
    browser = await launchChromium();
  });
  after(async () => {
    await browser?.close();
    await proxy("restore"); // whatever a failed test left
  });
  beforeEach(async () => {
    page = await (await browser.newContext({ viewport: { width: 1000, height: 760 } })).newPage();
    page.on("pageerror", (error) => assert.fail(`uncaught error in the page: ${error.message}`));
    warnings = [];
    page.on("console", (message) => {
      if (message.type() === "warning") warnings.push(message.text());
    });
    streamRequests = [];
    page.on("request", (request) => {
      if (new URL(request.url()).pathname.startsWith("/v1/streams/")) {
        streamRequests.push({ method: request.method(), url: request.url(), headers: request.headers(), at: Date.now() });
      }
    });
    page.on("requestfailed", (request) => {
      const sent = streamRequests.findLast((r) => r.url === request.url() && r.failed === undefined);
      if (sent) sent.failed = request.failure()?.errorText ?? "failed";
    });
    // When the page asks to resume, on the page's own clock (the attempts' spacing is checked).
    await page.addInitScript(() => {
      const sent = (window.__resumeCalls = []);
      const fetch = window.fetch;
      window.fetch = function (input, init) {
        const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
        if (/\/v1\/streams\/[^/]+$/.test(url)) sent.push(performance.now());
        return fetch.call(this, input, init);
      };
    });
    await page.goto(/** @type {string} */ (pageUrl));
    await page.locator("#model option").first().waitFor({ state: "attached" });
    // The key is sent on every route of the stream (the gateway here has auth off: it ignores it).
    await page.fill("#api-key", KEY);
    await page.locator("#api-key").dispatchEvent("change");
  });

  test("a dropped connection: the page reconnects and the answer goes on with no gap and no repeat", async () => {
    // 400 distinct words (~2,900 characters), echoed in 4-character pieces at 200 a second: ~3.6 s.
    const message = Array.from({ length: 400 }, (_, i) => `w${i}${"abcdefg"[i % 7]}`).join(" ");
    await page.selectOption("#model", "echo-paced");
    await watchAnswerTexts();
    const posted = page.waitForRequest((r) => r.url().endsWith("/chat"));
    const responded = page.waitForResponse((r) => r.url().endsWith("/chat"));
    await ask(message);
    const request = await posted;
    assert.equal(request.postDataJSON().resumable, true, "the page asks for a resumable stream");
    const chat = await responded;
    const streamId = chat.headers()["x-stream-id"];
    assert.match(streamId ?? "", /^[0-9a-f]{32}$/);

    const answer = page.locator(".message.assistant").last();
    await answer.locator(".body").filter({ hasText: /\bw30c\b/ }).waitFor();
    await proxy("cut");
    const cutAt = Date.now();

    // The page says so, in a live region, while it retries.
    await answer.and(page.locator('[data-state="reconnecting"]')).waitFor({ timeout: 5000 });
    const status = answer.locator(".status");
    assert.ok(await status.isVisible(), "the reconnecting status is shown");
    assert.match((await status.textContent()) ?? "", /Reconnecting…/);
    assert.equal(await status.getAttribute("role"), "status");
    assert.equal(await status.getAttribute("aria-live"), "polite");
    const shownWhenCut = (await answer.locator(".body").textContent()) ?? "";
    assert.ok(message.startsWith(shownWhenCut.trimEnd()), "what was shown is the start of the answer");
    assert.ok(shownWhenCut.length < message.length / 2, `cut mid-answer (${shownWhenCut.length} characters shown)`);
    mkdirSync(artifactDir, { recursive: true });
    await page.screenshot({ path: join(artifactDir, "chat-page-reconnecting.png") });
    await page.waitForTimeout(Math.max(0, 1000 - (Date.now() - cutAt)));
    await proxy("restore");

    await answer.and(page.locator('[data-state="done"]')).waitFor({ timeout: 20000 });
    assert.equal(await answer.locator(".body").textContent(), message, "the whole answer, no gap, no repeat");
    assert.equal(await page.locator('[data-state="reconnecting"]').count(), 0);
    assert.equal(await status.textContent(), "");
    assert.ok(!(await status.isVisible()), "the reconnecting status is gone");
    assert.equal(await answer.getByRole("alert").count(), 0);
    assert.match((await answer.locator(".meta").textContent()) ?? "", /^\d+ prompt \+ \d+ completion tokens/);
    // The text only ever grew: nothing shown was taken back or shown twice.
    const texts = await page.evaluate(() => window.__answerTexts);
    assert.ok(texts.length > 20, `the answer grew in ${texts.length} visible steps`);
    texts.forEach((text, i) => assert.ok(message.startsWith(text.trimEnd()), `step ${i} is a start of the answer`));
    assert.ok(texts.every((t, i) => i === 0 || t.trimEnd().length >= texts[i - 1].trimEnd().length), "it never shrank");
    assert.deepEqual(warnings.filter((w) => w.includes("already received")), [], "no event came twice");

    // EventSource-style: GET /v1/streams/{id} with the last event id, again after 250, 500, 1000 ms...
    const resumes = streamRequests.filter((r) => r.method === "GET");
    assert.ok(resumes.length >= 2, `${resumes.length} attempts to resume (the first ones while cut)`);
    for (const resume of resumes) {
      assert.equal(new URL(resume.url).pathname, `/v1/streams/${streamId}`);
      assert.equal(resume.headers["authorization"], `Bearer ${KEY}`);
      assert.ok(Number(resume.headers["last-event-id"]) > 0, "resumed after the events already shown");
    }
    assert.ok(resumes.at(-1)?.failed === undefined, "the last attempt worked");
    assert.ok(resumes.slice(0, -1).every((r) => r.failed !== undefined), "the earlier ones failed (cut)");
    // The waits, timed in the page: from "reconnecting" shown to each attempt, attempt to attempt.
    const { calls, states } = await page.evaluate(() => ({ calls: window.__resumeCalls, states: window.__answerStates }));
    assert.equal(calls.length, resumes.length);
    assert.deepEqual(states.map((/** @type {{state: string}} */ s) => s.state), ["streaming", "reconnecting", "streaming", "done"]);
    const droppedAt = states.find((/** @type {{state: string}} */ s) => s.state === "reconnecting")?.at;
    const waits = calls.map((/** @type {number} */ at, /** @type {number} */ i) => Math.round(at - (i ? calls[i - 1] : droppedAt)));
    const floors = [250, 500, 1000, 2000, 2000, 2000];
    waits.forEach((wait, i) => assert.ok(wait >= floors[i] - 5, `attempt ${i + 1} came after ${waits.join(", ")} ms`));
    record({ test: "resumed", request_id: chat.headers()["x-request-id"], stream_id: streamId, attempts: resumes.length });
  });

  test("a refusal while resuming (404) is shown and not retried", async () => {
    let refused = 0;
    await page.route("**/v1/streams/**", (route) => {
      refused += 1;
      return route.fulfill({
        status: 404,
        contentType: "application/json",
        body: JSON.stringify({ error: { message: "no such stream", type: "invalid_request_error", param: null, code: "stream_not_found" } }),
      });
    });
    await page.selectOption("#model", "echo-paced");
    await ask(Array.from({ length: 300 }, (_, i) => `v${i}`).join(" "));
    const answer = page.locator(".message.assistant").last();
    await answer.locator(".body").filter({ hasText: /\bv20\b/ }).waitFor();
    try {
      await proxy("cut");
      await answer.and(page.locator('[data-state="error"]')).waitFor({ timeout: 5000 });
      assert.match(
        (await answer.getByRole("alert").textContent()) ?? "",
        /The answer could not be resumed: the gateway no longer has it\. \(stream_not_found: no such stream\)/,
      );
      await page.waitForTimeout(1500); // time for two more attempts, if there were going to be any
      assert.equal(refused, 1, "one attempt, no retry after a 404");
      assert.equal(await answer.locator(".status").textContent(), "");
      assert.ok(await page.locator("#send").isEnabled(), "the page is ready for the next question");
    } finally {
      await proxy("restore");
    }
    record({ test: "resume_refused" });
  });

  test("Stop on a resumable stream ends it on the gateway, and the upstream call at once", async () => {
    await page.selectOption("#model", "slow"); // 2000 tokens at 50 per second: 40 s if not stopped
    const responded = page.waitForResponse((r) => r.url().endsWith("/chat"));
    await ask("Tell me a long story");
    const chat = await responded;
    const requestId = chat.headers()["x-request-id"];
    const streamId = chat.headers()["x-stream-id"];
    assert.match(streamId ?? "", /^[0-9a-f]{32}$/);
    const answer = page.locator(".message.assistant").last();
    await answer.locator(".body").filter({ hasText: /\S+ \S+ \S+/ }).waitFor();

    const stopped = page.waitForResponse((r) => r.url().endsWith(`/v1/streams/${streamId}/stop`));
    await page.click("#stop");
    const stop = await stopped;
    assert.equal(stop.request().method(), "POST");
    assert.equal(stop.request().headers()["authorization"], `Bearer ${KEY}`);
    assert.equal(stop.status(), 202);
    assert.deepEqual(await stop.json(), { id: streamId, stopped: true });
    await answer.and(page.locator('[data-state="stopped"]')).waitFor({ timeout: 5000 });
    // The stream ended by itself with done ("stopped"): the page did not cut it.
    assert.equal(await chat.finished(), null, "the /chat response was read to its end");
    assert.match((await answer.locator(".meta").textContent()) ?? "", /^stopped · \d+ prompt \+ \d+ completion tokens/);
    assert.ok(await page.locator("#send").isEnabled(), "the page is ready for the next question");
    assert.ok(await page.locator("#stop").isDisabled());

    const upstream = await waitUntil(async () => {
      const stats = await (await fetch(`${simUrl}/_stats`)).json();
      return stats.requests.find((/** @type {any} */ r) => r.request_id === requestId && r.ended_at !== null);
    }, 5000);
    assert.equal(upstream.end, "client_closed", "the upstream call was aborted, not left to finish");
    assert.ok(upstream.chunks_sent < 500, `the upstream stopped early (sent ${upstream.chunks_sent} chunks)`);
    record({ test: "stopped", request_id: requestId, stream_id: streamId });
  });

  /** Every distinct text and state of the last answer, seen by the page as they change. */
  async function watchAnswerTexts() {
    await page.evaluate(() => {
      const seen = (window.__answerTexts = []);
      const states = (window.__answerStates = []);
      new MutationObserver(() => {
        const answer = document.querySelector(".message.assistant:last-of-type");
        const text = answer?.querySelector(".body")?.textContent ?? "";
        if (text && text !== seen.at(-1)) seen.push(text);
        const state = answer?.getAttribute("data-state");
        if (state && state !== states.at(-1)?.state) states.push({ state, at: performance.now() });
      }).observe(document.getElementById("conversation"), {
        subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ["data-state"],
      });
    });
  }

  /** @param {string} question */
  async function ask(question) {
    await page.fill("#prompt", question);
    await page.press("#prompt", "Enter");
  }

  /** @param {"cut" | "restore"} action */
  async function proxy(action) {
    const response = await fetch(`${switchUrl}/${action}`, { method: "POST" });
    assert.equal(response.status, 204, `the proxy's ${action}`);
  }

  /** @param {Record<string, unknown>} result */
  function record(result) {
    appendFileSync(resultFile, `${JSON.stringify(result)}\n`);
  }
});
