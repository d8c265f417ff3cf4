// The chat page as a console: conversations kept in the browser and listed in a sidebar,
// regenerate and edit, per-answer stats, code blocks with Copy, keyboard-only use, a phone's
// width, smooth streaming of a long Markdown answer, and an accessibility scan (axe-core).
// In a real browser (Debian's chromium driven by playwright-core) against a real gateway and
// the simulated upstream. Started by tests/e2e/test_web_page.py, which passes:
//   TOKENRELAY_CHAT_CONSOLE  set: run these tests (test_chat_console_in_chromium does); the
//                        run of every file here (test_chat_page_in_chromium) skips them
//   TOKENRELAY_URL       the gateway (serving the page at /)
//   ARTIFACT_DIR         where screenshots go (light, dark, 375 px)
//   CHROMIUM             the browser binary
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, test as nodeTest } from "node:test";

import { launchChromium, need } from "./support.mjs";

const skip = !process.env.TOKENRELAY_CHAT_CONSOLE && "TOKENRELAY_CHAT_CONSOLE is not set";
const gatewayUrl = skip ? "" : need("TOKENRELAY_URL");
const artifactDir = skip ? "" : need("ARTIFACT_DIR");
const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/** @param {string} name @param {() => Promise<void>} body */
const test = (name, body) => nodeTest(name, { skip }, body);

/** @type {import("playwright-core").Browser} */
let browser;

before(async () => {
  if (skip) return;
  browser = await launchChromium();
});
after(async () => browser?.close());

/**
 * A fresh browser profile (empty storage) with the page loaded.
 * @param {{width?: number, height?: number, colorScheme?: "light" | "dark"}} [options]
 */
async function openPage(options = {}) {
  const context = await browser.newContext({
    viewport: { width: options.width ?? 1100, height: options.height ?? 760 },
    colorScheme: options.colorScheme ?? "light",
  });
  const page = await context.newPage();
  /** @type {string[]} */
  const problems = [];
  page.on("pageerror", (error) => problems.push(`uncaught error in the page: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });
  await page.goto(gatewayUrl);
  await page.locator("#model option").first().waitFor({ state: "attached" });
  return { page, context, problems };
}

/** @param {import("playwright-core").Page} page @param {string} question @param {string} [model] */
async function ask(page, question, model) {
  if (model) await page.selectOption("#model", model);
  await page.fill("#prompt", question);
  await page.press("#prompt", "Enter");
  await lastAnswerDone(page);
}

/** @param {import("playwright-core").Page} page @param {string} [state] */
async function lastAnswerDone(page, state = "done") {
  const answer = page.locator(".message.assistant").last();
  await answer.and(page.locator(`[data-state="${state}"]`)).waitFor({ timeout: 15000 });
  return answer;
}

/** @param {import("playwright-core").Page} page */
async function sidebarTitles(page) {
  return page.locator("#conversations li .open").evaluateAll((els) => els.map((e) => e.textContent));
}

test("conversations are kept in the browser: listed, and restored after a reload", async () => {
  const { page, context, problems } = await openPage();
  await ask(page, "Alpha question with **bold**", "echo");
  await ask(page, "Alpha follow-up");
  await page.click("#new-chat");
  await ask(page, "Beta question");
  assert.deepEqual(await sidebarTitles(page), ["Beta question", "Alpha question with **bold**"]);
  assert.equal(await page.locator("#conversations [aria-current=page]").textContent(), "Beta question");

  await page.reload();
  await page.locator("#model option").first().waitFor({ state: "attached" });
  assert.deepEqual(await sidebarTitles(page), ["Beta question", "Alpha question with **bold**"]);
  // The conversation open before the reload is open again, answers rendered, stats kept.
  assert.deepEqual(await page.locator(".message .body").allTextContents(), ["Beta question", "Beta question"]);
  const meta = (await page.locator(".message.assistant .meta").textContent()) ?? "";
  assert.match(meta, /^\d+ prompt \+ \d+ completion tokens · first token \d+ ms · \d+\.\d\d s · echo$/);

  await page.locator("#conversations li .open", { hasText: "Alpha" }).click();
  assert.deepEqual(await page.locator(".message .body").allTextContents(), [
    "Alpha question with **bold**", "Alpha question with bold", "Alpha follow-up", "Alpha follow-up",
  ]);
  assert.equal(await page.locator(".message.assistant strong").first().textContent(), "bold");
  // The next question goes on from the kept conversation: its history is sent.
  const request = page.waitForRequest((r) => r.url().endsWith("/chat"));
  await ask(page, "Alpha third");
  assert.deepEqual((await request).postDataJSON().messages.map((/** @type {any} */ m) => m.content), [
    "Alpha question with **bold**", "Alpha question with **bold**", "Alpha follow-up", "Alpha follow-up", "Alpha third",
  ]);
  assert.deepEqual(problems, []);
  await context.close();
});

test("an answer still streaming when the page is closed is kept as far as it got", async () => {
  const { page, context } = await openPage();
  await page.selectOption("#model", "slow"); // 2000 tokens at 50 per second
  await page.fill("#prompt", "A long story");
  await page.press("#prompt", "Enter");
  const answer = page.locator(".message.assistant").last();
  await answer.locator(".body").filter({ hasText: /(\S+ ){20}/ }).waitFor();
  await page.waitForTimeout(1300); // the page saves a streaming answer every second
  const shown = ((await answer.locator(".body").textContent()) ?? "").trim();
  await page.reload();
  const restored = page.locator(".message.assistant").last();
  assert.equal(await restored.getAttribute("data-state"), "interrupted");
  const kept = ((await restored.locator(".body").textContent()) ?? "").trim();
  assert.ok(kept.length > 20 && shown.startsWith(kept.slice(0, 20)), `kept ${kept.length} characters of the answer`);
  assert.equal(await restored.locator(".meta").textContent(), "interrupted");
  await context.close();
});

test("the kept conversations stay under a size cap and the browser's quota: the oldest go first", async () => {
  const { page, context, problems } = await openPage();
  const result = await page.evaluate(async () => {
    // @ts-ignore -- a module of the page, imported in the page
    const { ConversationStore } = await import("/static/chat/store.js");
    const conversation = (/** @type {string} */ id, /** @type {number} */ at, /** @type {number} */ size) => ({
      id, title: id, createdAt: at, updatedAt: at, messages: [{ role: "user", content: "x".repeat(size) }],
    });
    // Under the page's own cap.
    const small = new ConversationStore(localStorage, { maxChars: 25_000 });
    const droppedByCap = [
      small.save(conversation("a", 1, 10_000)), small.save(conversation("b", 2, 10_000)), small.save(conversation("c", 3, 10_000)),
    ];
    const underCap = small.list().map((/** @type {any} */ e) => e.id);
    for (const id of underCap) small.remove(id);
    // The browser's quota (about 5 M characters per site in Chromium), whatever the cap says.
    const big = new ConversationStore(localStorage, { maxChars: Infinity });
    const droppedByQuota = [1, 2, 3].map((i) => big.save(conversation(`big${i}`, i, 2_000_000)));
    return { droppedByCap, underCap, droppedByQuota, kept: big.list().map((/** @type {any} */ e) => e.id) };
  });
  assert.deepEqual(result.droppedByCap, [[], [], ["a"]]);
  assert.deepEqual(result.underCap, ["c", "b"]);
  assert.deepEqual(result.droppedByQuota, [[], [], ["big1"]]);
  assert.deepEqual(result.kept, ["big3", "big2"]);
  // The page lists what is kept.
  await page.reload();
  await page.locator("#model option").first().waitFor({ state: "attached" });
  assert.deepEqual(await sidebarTitles(page), ["big3", "big2"]);
  assert.deepEqual(problems, []);
  await context.close();
});

test("rename, search and delete conversations from the sidebar", async () => {
  const { page, context, problems } = await openPage();
  await ask(page, "first chat", "echo");
  await ask(page, "something about a banana");
  await page.click("#new-chat");
  await ask(page, "second chat");
  await page.click("#new-chat");
  await ask(page, "third chat");
  assert.deepEqual(await sidebarTitles(page), ["third chat", "second chat", "first chat"]);

  // Rename in place: Enter keeps the new title (Escape would keep the old one).
  const second = page.locator("#conversations li", { hasText: "second chat" });
  await second.locator(".rename").click();
  await page.locator("#conversations .rename-input").fill("Renamed <b>chat</b>");
  await page.keyboard.press("Enter");
  assert.deepEqual(await sidebarTitles(page), ["third chat", "Renamed <b>chat</b>", "first chat"]);
  assert.equal(await page.locator("#conversations b").count(), 0, "a title is text");

  // Search finds words in messages, not only in titles; Escape clears it.
  await page.fill("#search", "BANANA");
  assert.deepEqual(await sidebarTitles(page), ["first chat"]);
  await page.fill("#search", "nothing like this");
  assert.deepEqual(await sidebarTitles(page), []);
  assert.equal(await page.locator("#no-conversations").textContent(), "No conversation matches.");
  await page.press("#search", "Escape");
  assert.equal(await sidebarTitles(page).then((t) => t.length), 3);

  // Delete: the first press asks, the second deletes.
  const third = page.locator("#conversations li", { hasText: "third chat" });
  await third.locator(".delete").click();
  assert.equal(await third.locator(".delete").textContent(), "Sure?");
  assert.equal(await sidebarTitles(page).then((t) => t.length), 3);
  await third.locator(".delete").click();
  assert.deepEqual(await sidebarTitles(page), ["Renamed <b>chat</b>", "first chat"]);
  assert.equal(await page.locator(".message").count(), 0, "the open conversation was the deleted one");

  await page.reload();
  await page.locator("#model option").first().waitFor({ state: "attached" });
  assert.deepEqual(await sidebarTitles(page), ["Renamed <b>chat</b>", "first chat"]);
  assert.deepEqual(problems, []);
  await context.close();
});

test("regenerate the last answer; edit a question and send it again", async () => {
  const { page, context, problems } = await openPage();
  await ask(page, "one", "echo");
  await ask(page, "two");
  // Only the last answer offers Regenerate.
  assert.deepEqual(await page.locator(".message.assistant .regenerate").evaluateAll((els) => els.map((e) => e.hidden)), [true, false]);

  let request = page.waitForRequest((r) => r.url().endsWith("/chat"));
  await page.locator(".message.assistant .regenerate").last().click();
  assert.deepEqual((await request).postDataJSON().messages, [
    { role: "user", content: "one" }, { role: "assistant", content: "one" }, { role: "user", content: "two" },
  ]);
  await lastAnswerDone(page);
  assert.deepEqual(await page.locator(".message .body").allTextContents(), ["one", "one", "two", "two"]);

  // Edit the first question: what came after it goes, the edited question is asked.
  await page.locator(".message.user .edit").first().click();
  const editor = page.getByRole("textbox", { name: "Edit your question" });
  assert.equal(await editor.inputValue(), "one");
  await editor.fill("one, edited");
  request = page.waitForRequest((r) => r.url().endsWith("/chat"));
  await editor.press("Enter");
  assert.deepEqual((await request).postDataJSON().messages, [{ role: "user", content: "one, edited" }]);
  await lastAnswerDone(page);
  assert.deepEqual(await page.locator(".message .body").allTextContents(), ["one, edited", "one, edited"]);

  await page.reload();
  assert.deepEqual(await page.locator(".message .body").allTextContents(), ["one, edited", "one, edited"]);
  assert.deepEqual(problems, []);
  await context.close();
});

test("each answer shows its model, time to first token, duration, tokens, and cost when priced", async () => {
  const { page, context, problems } = await openPage();
  const response = page.waitForResponse((r) => r.url().endsWith("/chat"));
  await ask(page, "hello", "priced");
  // What the gateway's usage event said, read from the same stream the page read.
  const body = await (await response).text();
  const usage = body.split("\n").filter((l) => l.startsWith("data: ")).map((l) => JSON.parse(l.slice(6))).find((e) => e.type === "usage");
  const meta = (await page.locator(".message.assistant .meta").textContent()) ?? "";
  const cost = typeof usage.cost_usd === "number" ? ` · \\$${usage.cost_usd >= 0.01 ? usage.cost_usd.toFixed(4) : "0\\.0*\\d+"}` : "";
  assert.match(
    meta,
    new RegExp(`^${usage.prompt_tokens} prompt \\+ ${usage.completion_tokens} completion tokens · first token \\d+ ms · \\d+\\.\\d\\d s${cost} · priced$`),
  );

  // The page's side of a priced answer's usage event (the documented `cost_usd`), served in
  // place of the gateway's answer.
  await page.route("**/chat", (route) =>
    route.fulfill({
      status: 200,
      contentType: "text/event-stream",
      body: [
        { type: "delta", text: "Priced answer" },
        { type: "usage", prompt_tokens: 12, completion_tokens: 30, total_tokens: 42, source: "upstream", cost_usd: 0.000052 },
        { type: "done", finish_reason: "stop" },
      ].map((event, i) => `id: ${i + 1}\ndata: ${JSON.stringify(event)}\n\n`).join(""),
    }),
  );
  await ask(page, "what does it cost?");
  assert.match(
    (await page.locator(".message.assistant .meta").last().textContent()) ?? "",
    /^12 prompt \+ 30 completion tokens · first token \d+ ms · \d+\.\d\d s · \$0\.000052 · priced$/,
  );
  assert.deepEqual(problems, []);
  await context.close();
});

test("a table and a highlighted code block render; Copy puts the code on the clipboard", async () => {
  const { page, context, problems } = await openPage();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: gatewayUrl });
  const code = 'def greet(name):\n    """Say hello."""\n    return f"Hello, {name}!"  # <b>not bold</b>';
  const markdown = [
    "| Model | Tokens | Cost |",
    "|:------|:------:|-----:|",
    "| fast | 20 | $0 |",
    "| priced | 27 | **$0.04** |",
    "",
    "1. first",
    "   - nested *one*",
    "   - nested two",
    "2. second",
    "",
    "```python",
    code,
    "```",
    "",
    "A picture inline: ![a red dot](data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=)",
  ].join("\n");
  await ask(page, markdown, "markdown");
  const body = page.locator(".message.assistant .body").last();
  // The page followed the answer to its end.
  const [top, height, visible] = await page.locator("#conversation").evaluate((c) => [c.scrollTop, c.scrollHeight, c.clientHeight]);
  assert.ok(height > visible && top + visible >= height - 2, `scrolled to ${top} + ${visible} of ${height}`);
  assert.deepEqual(await body.locator("table th").allTextContents(), ["Model", "Tokens", "Cost"]);
  assert.deepEqual(await body.locator("table tbody tr").count(), 2);
  assert.deepEqual(await body.locator("th").evaluateAll((els) => els.map((e) => e.className)), ["align-left", "align-center", "align-right"]);
  assert.equal(await body.locator("td strong").textContent(), "$0.04");
  assert.deepEqual(await body.locator("ol > li > ul > li").allTextContents(), ["nested one", "nested two"]);
  assert.equal(await body.locator("ol > li > ul em").textContent(), "one");

  // A data: image (png, gif, jpeg, webp) is shown: it loads nothing from anywhere.
  const image = body.locator("img");
  assert.equal(await image.getAttribute("alt"), "a red dot");
  assert.equal(await image.evaluate((img) => /** @type {HTMLImageElement} */ (img).naturalWidth), 1);

  const block = body.locator(".code-block");
  assert.equal(await block.locator(".code-lang").textContent(), "python");
  const codeElement = block.locator("pre code");
  assert.equal(await codeElement.textContent(), `${code}\n`);
  assert.match((await codeElement.getAttribute("class")) ?? "", /\bhljs\b.*\blanguage-python\b/);
  assert.equal(await codeElement.locator(".hljs-keyword").first().textContent(), "def");
  assert.ok(await codeElement.locator(".hljs-string").count() >= 2, "strings highlighted");
  assert.equal(await codeElement.locator("b").count(), 0, "highlighted code is text, not markup");
  // Highlighted: keywords are drawn in another colour than plain code.
  const [keyword, plain] = await codeElement.evaluate((el) => [
    getComputedStyle(/** @type {Element} */ (el.querySelector(".hljs-keyword"))).color, getComputedStyle(el).color,
  ]);
  assert.notEqual(keyword, plain);

  await block.locator("button.copy").click();
  await block.locator("button.copy", { hasText: "Copied" }).waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), `${code}\n`);
  assert.deepEqual(problems, []);
  await context.close();
});

test("keyboard only: send, stop, new chat, switch conversation, copy", async () => {
  const { page, context, problems } = await openPage();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: gatewayUrl });
  const focused = () => page.evaluate(() => document.activeElement?.id || document.activeElement?.className || "");
  /** Tab (or Shift+Tab) until the focused element is `wanted`. @param {string} wanted @param {boolean} [back] */
  const tabTo = async (wanted, back = false) => {
    for (let i = 0; i < 60; i += 1) {
      if ((await focused()) === wanted) return;
      await page.keyboard.press(back ? "Shift+Tab" : "Tab");
    }
    assert.fail(`${wanted} is not reachable with ${back ? "Shift+Tab" : "Tab"}`);
  };
  /** Pick a model in the <select> by typing its name, then go to the message box. @param {string} name */
  const chooseModel = async (name) => {
    await tabTo("model", true);
    await page.keyboard.type(name);
    assert.equal(await page.locator("#model").inputValue(), name);
    await tabTo("prompt");
  };

  await tabTo("prompt");
  await chooseModel("echo");
  await page.keyboard.type("keyboard **first**");
  await page.keyboard.press("Enter");
  await lastAnswerDone(page);
  assert.equal(await focused(), "prompt", "focus is back in the message box");

  // A long answer, stopped with Escape.
  await chooseModel("slow");
  await page.keyboard.type("a long one");
  await page.keyboard.press("Enter");
  await page.locator(".message.assistant").last().locator(".body").filter({ hasText: /\S+ \S+ \S+/ }).waitFor();
  await page.keyboard.press("Escape");
  await lastAnswerDone(page, "stopped");
  assert.equal(await focused(), "prompt");

  // Alt+Shift+N: a new chat, focus in the message box.
  await page.keyboard.press("Alt+Shift+N");
  assert.equal(await page.locator(".message").count(), 0);
  assert.equal(await focused(), "prompt");
  await chooseModel("echo");
  await page.keyboard.type("keyboard second");
  await page.keyboard.press("Enter");
  await lastAnswerDone(page);

  // Alt+ArrowDown / Alt+ArrowUp: the next / previous conversation in the list.
  await page.keyboard.press("Alt+ArrowDown");
  assert.equal(await page.locator(".message.user .body").first().textContent(), "keyboard **first**");
  assert.equal(await focused(), "prompt");
  await page.keyboard.press("Alt+ArrowUp");
  assert.equal(await page.locator(".message.user .body").first().textContent(), "keyboard second");

  // The sidebar by Tab: a conversation opens with Enter.
  await tabTo("open", true);
  const title = await page.evaluate(() => document.activeElement?.textContent);
  assert.equal(title, "keyboard **first**");
  await page.keyboard.press("Enter");
  assert.equal(await page.locator(".message.user .body").first().textContent(), title);
  assert.equal(await page.locator("#conversations [aria-current=page]").textContent(), title);

  // A code block's Copy button by Tab and Enter.
  await tabTo("prompt");
  await page.keyboard.type("```js");
  await page.keyboard.press("Shift+Enter");
  await page.keyboard.type("let copied = true;");
  await page.keyboard.press("Shift+Enter");
  await page.keyboard.type("```");
  await page.keyboard.press("Enter");
  await lastAnswerDone(page);
  await tabTo("copy", true);
  await page.keyboard.press("Enter");
  await page.locator("button.copy", { hasText: "Copied" }).waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), "let copied = true;\n");
  assert.deepEqual(problems, []);
  await context.close();
});

test("at a phone's width (375 px) the page fits and works", async () => {
  const { page, context, problems } = await openPage({ width: 375, height: 740 });
  await ask(page, "A question on a phone, with a table:\n\n| a | b |\n|---|---|\n| 1 | 2 |", "echo");
  await page.click("#new-chat");
  await ask(page, "Another one on a phone");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow} px wider than the screen`);
  for (const selector of ["#prompt", "#send", "#stop", "#model", "#new-chat", "#toggle-sidebar"]) {
    const box = await page.locator(selector).boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= 375 && box.y + box.height <= 740, `${selector} on screen: ${JSON.stringify(box)}`);
  }
  const bubble = page.locator(".message.assistant").last();
  const bubbleBox = await bubble.boundingBox();
  assert.ok(bubbleBox && bubbleBox.width <= 375, "an answer fits the width");

  // The sidebar is a drawer: hidden until asked for, then conversations can be opened.
  assert.ok(!(await page.locator("#sidebar").isVisible()));
  await page.click("#toggle-sidebar");
  assert.equal(await page.locator("#toggle-sidebar").getAttribute("aria-expanded"), "true");
  await page.locator("#conversations li .open", { hasText: "A question on a phone" }).click();
  assert.ok(!(await page.locator("#sidebar").isVisible()), "the drawer closes when a conversation opens");
  assert.equal(await page.locator(".message.assistant table").count(), 1);
  mkdirSync(artifactDir, { recursive: true });
  await page.screenshot({ path: join(artifactDir, "chat-375.png") });
  assert.deepEqual(problems, []);
  await context.close();
});

// The frame budget: a Markdown answer keeps 95 % of frames under 50 ms (three 60 Hz frames).
// One paragraph of 111,000 characters is laid out whole by Chromium on every change, which
// costs 17-33 ms here however little of it the page redraws; its budget is 67 ms (four
// frames) -- no freezes -- and the removed-characters check below shows that only the end is
// drawn again.
for (const [model, what, budget] of /** @type {const} */ ([
  ["markdown", "a 20,000-token Markdown answer", 50],
  ["long-line", "a 20,000-token answer in one unbroken paragraph", 67],
])) {
  test(`${what} streams smoothly: 95th-percentile frame under ${budget} ms`, async () => {
    const { page, context, problems } = await openPage({ width: 1000, height: 760 });
    const question = model === "markdown" ? longMarkdown() : "go";
    if (model === "markdown") assert.ok(question.length / 5 >= 20_000, `${question.length / 5} tokens of 5 characters`);
    await page.selectOption("#model", model);
    await page.fill("#prompt", question);
    await page.press("#prompt", "Enter");
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
      // all of it off every time; rendering the last block again takes off that block only.
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
    // Each piece of text is drawn a bounded number of times (while its block is the last, once
    // more when it is final), not once per frame: a whole re-render per frame would take off
    // about frames × length / 2.
    assert.ok(removed < 2 * length, `${removed} characters re-rendered for an answer of ${length}`);
    if (model === "markdown") {
      assert.equal(await answer.locator(".body pre").count(), PARTS);
      assert.equal(await answer.locator(".body pre:has(code.hljs .hljs-keyword)").count(), PARTS, "every block highlighted");
      assert.equal(await answer.locator(".body table").count(), PARTS);
      assert.equal(await answer.locator(".body h4").count(), PARTS);
    }
    assert.deepEqual(problems, []);
    await context.close();
  });
}

/** Sections of the long Markdown answer: 94 make 101 KB, 20,000 of the simulator's 5-character tokens. */
const PARTS = 94;

/** About 20,000 tokens of Markdown (~100 KB): headings, paragraphs, lists, tables and code. */
function longMarkdown() {
  const parts = [];
  for (let i = 0; i < PARTS; i += 1) {
    parts.push(`## Part ${i}`);
    parts.push(`This is **paragraph ${i}** with \`inline code\`, *emphasis* and a [link](https://example.com/${i}). `.repeat(6));
    parts.push(["- first point", "- second point with `code`", "  1. nested", "  2. list", "- third point"].join("\n"));
    parts.push("```js\n" + `function part${i}(x) {\n  return x * ${i};\n}\n`.repeat(2) + "```");
    parts.push(["| key | value |", "|-----|------:|", `| part | ${i} |`, "| squared | " + i * i + " |"].join("\n"));
    parts.push("Closing words for this part, plain text that goes on for a while. ".repeat(4));
  }
  return parts.join("\n\n");
}

test("no serious or critical accessibility violation (axe-core), light and dark", async () => {
  for (const colorScheme of /** @type {const} */ (["light", "dark"])) {
    const { page, context, problems } = await openPage({ colorScheme });
    await ask(page, "What can you do?", "echo");
    await ask(page, "A table, a list and code:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- one\n- two\n\n```py\nprint('hi')\n```\n\nSee [the docs](https://example.com).");
    await page.evaluate(AXE_SOURCE); // run by the test harness, not a script of the page: the CSP stays
    const violations = await page.evaluate(async () => {
      // @ts-ignore -- axe was just defined in the page
      const result = await window.axe.run(document, { resultTypes: ["violations"] });
      return result.violations.map((/** @type {any} */ v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((/** @type {any} */ n) => n.target.join(" ")) }));
    });
    const serious = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
    assert.deepEqual(serious, [], `${colorScheme}: ${JSON.stringify(serious)}`);
    // The scheme is followed: dark is dark, light is light.
    const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const [r, g, b] = (background.match(/\d+/g) ?? []).map(Number);
    assert.ok(colorScheme === "dark" ? r + g + b < 150 : r + g + b > 600, `${colorScheme} background ${background}`);
    mkdirSync(artifactDir, { recursive: true });
    await page.screenshot({ path: join(artifactDir, `chat-${colorScheme}.png`) });
    assert.deepEqual(problems, []);
    await context.close();
  }
});
