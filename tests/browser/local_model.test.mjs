// The chat page with the local model (llama.cpp) in a real browser. Run by
// tests/e2e/test_local_model.py with TOKENRELAY_LOCAL_URL set; skipped otherwise.
import assert from "node:assert/strict";
import { test } from "node:test";

import { launchChromium } from "./support.mjs";

const gatewayUrl = process.env.TOKENRELAY_LOCAL_URL;

test("a conversation with the local model", { skip: !gatewayUrl && "TOKENRELAY_LOCAL_URL is not set" }, async () => {
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    page.on("pageerror", (error) => assert.fail(`uncaught error in the page: ${error.message}`));
    await page.goto(/** @type {string} */ (gatewayUrl));
    await page.locator("#model option").first().waitFor({ state: "attached" });
    assert.equal(await page.locator("#model").inputValue(), "local", "the local model is the default");
    await page.fill("#prompt", "What is the capital of France?");
    await page.press("#prompt", "Enter");
    const answer = page.locator(".message.assistant").last();
    await answer.and(page.locator('[data-state="done"]')).waitFor({ timeout: 60000 });
    assert.ok(((await answer.locator(".body").textContent()) ?? "").trim().length > 0);
    assert.match(
      (await answer.locator(".meta").textContent()) ?? "",
      /\d+ prompt \+ \d+ completion tokens, counted with the model's tokenizer · first token \d+ ms/,
    );
  } finally {
    await browser.close();
  }
});
