// Screenshots of the chat page for the docs, light and dark: docs/screenshots/chat-light.png and
// chat-dark.png. Not a test (node --test does not pick it up). Run against a gateway serving a
// model that echoes the question (the tests' simulator model table has "echo"):
//   TOKENRELAY_URL=http://127.0.0.1:8000 [MODEL=echo] [OUT_DIR=docs/screenshots] node tests/browser/screenshots.mjs
import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const url = process.env.TOKENRELAY_URL ?? "http://127.0.0.1:8000";
const model = process.env.MODEL ?? "echo";
const outDir = resolve(process.env.OUT_DIR ?? join(dirname(fileURLToPath(import.meta.url)), "../../docs/screenshots"));

const ANSWER = [
  "## Streaming, step by step",
  "",
  "tokenrelay relays each token **as it arrives** and keeps *one* usage row per stream:",
  "",
  "1. the client asks `POST /chat`",
  "2. the gateway picks a deployment",
  "   - the least busy one first",
  "   - another one if it fails before the first token",
  "3. tokens stream back as events",
  "",
  "| event | when |",
  "|:------|-----:|",
  "| `delta` | each piece of text |",
  "| `usage` | at the end |",
  "",
  "```python",
  "from tokenrelay.client import Client",
  "",
  "for event in Client(\"http://127.0.0.1:8000\").chat(\"Hello!\"):",
  "    print(event.text, end=\"\")  # tokens as they come",
  "```",
].join("\n");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking"],
});
try {
  mkdirSync(outDir, { recursive: true });
  for (const colorScheme of /** @type {const} */ (["light", "dark"])) {
    const context = await browser.newContext({ viewport: { width: 1200, height: 860 }, colorScheme });
    const page = await context.newPage();
    await page.goto(url);
    await page.locator("#model option").first().waitFor({ state: "attached" });
    await page.selectOption("#model", model);
    for (const question of ["What is a resumable stream?", "How do budgets work across replicas?", ANSWER]) {
      if (question === ANSWER) await page.click("#new-chat");
      await page.fill("#prompt", question);
      await page.press("#prompt", "Enter");
      await page.locator('.message.assistant:last-of-type[data-state="done"]').waitFor({ timeout: 15000 });
    }
    await page.locator("#prompt").focus();
    await page.screenshot({ path: join(outDir, `chat-${colorScheme}.png`) });
    await context.close();
    console.log(join(outDir, `chat-${colorScheme}.png`));
  }
} finally {
  await browser.close();
}
