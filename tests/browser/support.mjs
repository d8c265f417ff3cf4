// What the browser tests share (not a test file: node --test does not pick it up).
import assert from "node:assert/strict";

import { chromium } from "playwright-core";

/** Debian's chromium (or $CHROMIUM), kept off the network: this machine has only loopback. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
}

/**
 * Poll ``probe`` until it returns something other than undefined, or fail after ``ms``.
 * @template T
 * @param {() => Promise<T | undefined>} probe
 * @param {number} ms
 * @param {number} [every] milliseconds between polls
 * @returns {Promise<T>}
 */
export async function waitUntil(probe, ms, every = 20) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`not true within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

/**
 * An environment variable the pytest wrapper sets (the gateway's URL, a key...).
 * @param {string} name
 */
export function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this file through its pytest wrapper in tests/e2e/`);
  return value;
}
