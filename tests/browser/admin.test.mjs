// The admin console (/admin) in a real browser (Debian's chromium driven by playwright-core)
// against a real gateway with keys on, a seeded ledger and the simulated upstream. Started by
// tests/e2e/test_admin_page.py, which passes:
//   TOKENRELAY_ADMIN_URL        the gateway (serving the console at /admin)
//   TOKENRELAY_ADMIN_KEY        its admin key
//   TOKENRELAY_USER_KEY         a valid key that is not the admin key (seeded)
//   TOKENRELAY_DB_TOTALS        JSON: the seeded rows summed by SQL on the database itself
//                               ({streams, prompt_tokens, completion_tokens, total_tokens,
//                               cost_usd, by_key: {id: total_tokens}, by_model: {...}})
//   TOKENRELAY_KEY_CACHE_SECONDS the gateway's auth.key_cache_seconds
//   TOKENRELAY_RESULT_FILE      one JSON line per test that ran, for the Python side to check
//   SCREENSHOT_DIR              where admin-light.png and admin-dark.png go
//   ARTIFACT_DIR                where the other screenshots go (Keys, Live, a phone's width)
//   CHROMIUM                    the browser binary
// Skipped when TOKENRELAY_ADMIN_URL is not set (test_chat_page_in_chromium runs every file here
// against a gateway without keys).
import assert from "node:assert/strict";
import { appendFileSync, mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, afterEach, before, describe, test } from "node:test";

import { launchChromium, need, waitUntil as poll } from "./support.mjs";

/** Polls every 100 ms: some probes here are requests to the gateway. @type {typeof poll} */
const waitUntil = (probe, ms) => poll(probe, ms, 100);

const baseUrl = process.env.TOKENRELAY_ADMIN_URL;

describe("the admin console", { skip: !baseUrl && "TOKENRELAY_ADMIN_URL is not set" }, () => {
  const adminKey = need("TOKENRELAY_ADMIN_KEY");
  const userKey = need("TOKENRELAY_USER_KEY");
  const dbTotals = JSON.parse(need("TOKENRELAY_DB_TOTALS"));
  const keyCacheMs = Number(need("TOKENRELAY_KEY_CACHE_SECONDS")) * 1000;
  const resultFile = need("TOKENRELAY_RESULT_FILE");
  const screenshotDir = need("SCREENSHOT_DIR");
  const artifactDir = need("ARTIFACT_DIR");
  const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

  /** @type {import("playwright-core").Browser} */
  let browser;
  /** @type {import("playwright-core").BrowserContext[]} */
  let contexts = [];
  /** Console errors and uncaught exceptions of every page of the current test. */
  /** @type {string[]} */
  let problems = [];

  before(async () => {
    browser = await launchChromium();
  });
  after(async () => browser?.close());
  afterEach(async () => {
    for (const context of contexts) await context.close();
    contexts = [];
    // A CSP violation, a failed module or an exception in the page is a failure of any test.
    // The browser's own "Failed to load resource" line for an expected 401/403 is not.
    const unexpected = problems.filter((p) => !/Failed to load resource: the server responded with a status of 40[13]/.test(p));
    problems = [];
    assert.deepEqual(unexpected, [], "no console error or uncaught exception in the page");
  });

  /**
   * A fresh page on /admin (a new context: its own session storage).
   * @param {{colorScheme?: "light" | "dark", width?: number, height?: number}} [options]
   */
  async function newPage({ colorScheme = "light", width = 1280, height = 900 } = {}) {
    const context = await browser.newContext({ viewport: { width, height }, colorScheme, acceptDownloads: true });
    contexts.push(context);
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: baseUrl });
    const page = await context.newPage();
    page.on("pageerror", (error) => problems.push(`uncaught: ${error.message}`));
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(message.text());
    });
    await page.goto(`${baseUrl}/admin`);
    await page.locator("html[data-ready]").waitFor({ state: "attached" });
    return page;
  }

  /** A page past the key prompt, on the Usage tab with its numbers shown. */
  async function openConsole(/** @type {Parameters<typeof newPage>[0]} */ options) {
    const page = await newPage(options);
    await page.fill("#admin-key", adminKey);
    await page.click("#login-form button[type=submit]");
    await page.locator("#tabs").waitFor();
    await page.locator("#usage-totals [data-field=total_tokens]").waitFor();
    return page;
  }

  /** @param {import("playwright-core").Page} page @param {string} name */
  async function selectTab(page, name) {
    await page.click(`#tab-${name}`);
    await page.locator(`#panel-${name}`).waitFor();
  }

  /** @param {string} path */
  async function adminGet(path) {
    const response = await fetch(`${baseUrl}${path}`, { headers: { authorization: `Bearer ${adminKey}` } });
    assert.equal(response.status, 200, `${path}: ${await response.clone().text()}`);
    return response.json();
  }

  /**
   * @param {string} key
   * @param {string} model
   * @param {AbortSignal} [signal]
   */
  function chat(key, model, signal) {
    return fetch(`${baseUrl}/chat`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model, messages: [{ role: "user", content: "hello from the admin test" }] }),
      signal,
    });
  }

  /** The data-value of every element matching ``selector``, as numbers. */
  async function values(/** @type {import("playwright-core").Page} */ page, /** @type {string} */ selector) {
    return page.locator(selector).evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-value"))));
  }

  /** @param {import("playwright-core").Page} page @param {string} selector */
  async function value(page, selector) {
    const raw = await page.locator(selector).getAttribute("data-value");
    assert.ok(raw !== null && raw !== "", `${selector} has a value`);
    return Number(raw);
  }

  /**
   * axe-core's serious and critical violations on the page as it is now.
   * @param {import("playwright-core").Page} page
   */
  async function seriousViolations(page) {
    // Evaluated through the DevTools protocol, which the page's CSP does not govern.
    if (!(await page.evaluate(() => "axe" in window))) await page.evaluate(axeSource);
    const violations = await page.evaluate(async () => {
      // @ts-ignore: axe-core, evaluated above
      const outcome = await window.axe.run(document, { resultTypes: ["violations"] });
      return outcome.violations.map((/** @type {any} */ v) => ({
        id: v.id, impact: v.impact, nodes: v.nodes.map((/** @type {any} */ n) => n.target.join(" ")).slice(0, 3),
      }));
    });
    return violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.id} (${v.impact}): ${v.nodes.join(", ")}`);
  }

  /** @param {Record<string, unknown>} entry */
  function result(entry) {
    appendFileSync(resultFile, `${JSON.stringify(entry)}\n`);
  }

  test("the key prompt: asked for, refused clearly when wrong or not the admin's, kept in session storage only", async () => {
    const page = await newPage();
    assert.ok(await page.locator("#login").isVisible(), "no key yet: the prompt is shown");
    assert.ok(await page.locator("#tabs").isHidden());
    assert.equal(await page.locator("#admin-key").getAttribute("type"), "password");

    await page.fill("#admin-key", "not-the-admin-key");
    await page.click("#login-form button[type=submit]");
    await page.locator("#login-error", { hasText: "did not accept" }).waitFor();
    assert.equal(await page.locator("#admin-key").getAttribute("aria-invalid"), "true");
    assert.equal(await page.evaluate(() => sessionStorage.length), 0, "a refused key is not kept");

    await page.fill("#admin-key", userKey);
    await page.click("#login-form button[type=submit]");
    await page.locator("#login-error", { hasText: "not the admin key" }).waitFor();
    assert.match((await page.locator("#login-error").textContent()) ?? "", /permission_denied|403/);

    await page.fill("#admin-key", adminKey);
    await page.click("#login-form button[type=submit]");
    await page.locator("#tabs").waitFor();
    assert.ok(await page.locator("#login").isHidden());
    assert.equal(await page.evaluate(() => Object.values(sessionStorage).join()), adminKey);
    assert.equal(await page.evaluate(() => localStorage.length), 0, "never in local storage");

    await page.reload();
    await page.locator("#tabs").waitFor(); // the same tab keeps it
    await page.click("#sign-out");
    assert.ok(await page.locator("#login").isVisible());
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);

    // A new tab (a new session) starts without it.
    const other = await newPage();
    assert.ok(await other.locator("#login").isVisible());
    result({ test: "login" });
  });

  test("usage totals, tables and CSV equal /v1/usage and the database", async () => {
    const page = await openConsole();
    const today = new Date().toISOString().slice(0, 10);
    assert.equal(await page.inputValue("#usage-to"), today, "the range ends today (UTC)");
    assert.equal(await page.inputValue("#usage-from"), new Date(Date.now() - 6 * 86_400_000).toISOString().slice(0, 10));
    const since = /** @type {string} */ (await page.locator("#panel-usage").getAttribute("data-since"));
    const until = /** @type {string} */ (await page.locator("#panel-usage").getAttribute("data-until"));
    const query = (/** @type {Record<string, string>} */ extra) => `/v1/usage?${new URLSearchParams({ since, until, ...extra })}`;

    // The totals: the page = the API = SQL on the database.
    const byModel = await adminGet(query({ group_by: "model" }));
    for (const field of ["streams", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"]) {
      const shown = await value(page, `#usage-totals [data-field=${field}]`);
      assert.equal(shown, byModel.totals[field], `${field}: the page shows the API's total`);
      assert.equal(byModel.totals[field], dbTotals[field], `${field}: the API's total is the database's`);
    }
    assert.equal(await value(page, "#tokens-table tfoot [data-split='*']"), dbTotals.total_tokens);
    assert.equal(await value(page, "#cost-table tfoot [data-split='*']"), dbTotals.cost_usd);
    assert.match((await page.locator("#usage-totals [data-field=total_tokens]").textContent()) ?? "", /^\d{1,3}(,\d{3})+$/, "formatted for reading");

    // Each cell of the per-day, per-model table is the API's, and so are the row and column totals.
    const cells = await adminGet(query({ group_by: "day", split_by: "model" }));
    const days = await adminGet(query({ group_by: "day" }));
    const rows = await page.locator("#tokens-table tbody tr").evaluateAll((trs) =>
      trs.map((tr) => ({
        bucket: tr.getAttribute("data-bucket"),
        cells: [...tr.querySelectorAll("td")].map((td) => [td.getAttribute("data-split"), Number(td.getAttribute("data-value"))]),
      })));
    assert.equal(rows.length, days.data.length, "a row per day with usage");
    assert.ok(rows.length >= 7, `the seeded week shows (${rows.length} days)`);
    for (const row of rows) {
      for (const [split, shown] of row.cells) {
        if (split === "*") {
          assert.equal(shown, days.data.find((/** @type {any} */ d) => d.group === row.bucket).total_tokens);
        } else {
          const item = cells.data.find((/** @type {any} */ c) => c.day === row.bucket && c.model === split);
          assert.equal(shown, item ? item.total_tokens : 0, `${row.bucket} ${split}`);
        }
      }
    }
    const modelTotals = Object.fromEntries(
      (await page.locator("#tokens-table tfoot td").evaluateAll((tds) => tds.map((td) => [td.getAttribute("data-split"), Number(td.getAttribute("data-value"))])))
        .filter(([split]) => split !== "*"));
    assert.deepEqual(modelTotals, dbTotals.by_model, "column totals: per model, as in the database");
    const costCells = await values(page, "#cost-table tbody td[data-split='*']");
    assert.deepEqual(costCells, days.data.map((/** @type {any} */ d) => d.cost_usd));

    // Both charts drew, with a legend entry per model.
    assert.equal(await page.locator("#tokens-chart canvas").count(), 1);
    assert.equal(await page.locator("#cost-chart canvas").count(), 1);
    assert.equal(await page.locator("#tokens-legend li").count(), Object.keys(dbTotals.by_model).length);

    // The CSV: every (day, model) item of the API, numbers as the API wrote them.
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#usage-csv")]);
    assert.match(download.suggestedFilename(), /^tokenrelay-usage-.*-per-day-by-model\.csv$/);
    const csv = readFileSync(/** @type {string} */ (await download.path()), "utf8").trimEnd().split("\r\n");
    assert.equal(csv[0], "day,model,label,streams,prompt_tokens,completion_tokens,total_tokens,cost_usd");
    assert.deepEqual(csv.slice(1), cells.data.map((/** @type {any} */ c) =>
      [c.day, c.model, c.model, c.streams, c.prompt_tokens, c.completion_tokens, c.total_tokens, c.cost_usd].join(",")));

    // Split by key: a column per key, named, with the database's totals.
    const keys = (await adminGet("/v1/admin/keys")).data;
    await page.selectOption("#usage-split", "key");
    await page.locator("#tokens-table thead th", { hasText: keys[0].prefix }).waitFor();
    const keyTotals = Object.fromEntries(
      (await page.locator("#tokens-table tfoot td").evaluateAll((tds) => tds.map((td) => [td.getAttribute("data-split"), Number(td.getAttribute("data-value"))])))
        .filter(([split]) => split !== "*"));
    assert.deepEqual(keyTotals, dbTotals.by_key);
    assert.equal(await value(page, "#tokens-table tfoot [data-split='*']"), dbTotals.total_tokens);

    // Split by deployment: the API's per-deployment totals.
    const byDeployment = await adminGet(query({ group_by: "deployment" }));
    await page.selectOption("#usage-split", "deployment");
    await page.locator("#tokens-table thead th", { hasText: "backup" }).waitFor();
    assert.deepEqual(
      Object.fromEntries(await page.locator("#tokens-table tfoot td:not([data-split='*'])").evaluateAll((tds) =>
        tds.map((td) => [td.getAttribute("data-split"), Number(td.getAttribute("data-value"))]))),
      Object.fromEntries(byDeployment.data.map((/** @type {any} */ d) => [d.group ?? "", d.total_tokens])));
    assert.equal(byDeployment.data.length, 3, "primary, backup and anthropic-1");

    // Per hour: a row per hour with usage; the same totals.
    const hours = await adminGet(query({ group_by: "hour" }));
    await page.selectOption("#usage-bucket", "hour");
    await page.locator("#tokens-table thead th", { hasText: "Hour (UTC)" }).waitFor();
    assert.equal(await page.locator("#tokens-table tbody tr").count(), hours.data.length);
    assert.equal(await value(page, "#tokens-table tfoot [data-split='*']"), dbTotals.total_tokens);

    // Top keys: largest first, as the API counts them.
    const byKey = await adminGet(query({ group_by: "key" }));
    const top = [...byKey.data].sort((a, b) => b.total_tokens - a.total_tokens);
    assert.deepEqual(
      await page.locator("#top-keys tbody tr").evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-key-id"))),
      top.slice(0, 10).map((item) => item.group ?? ""));
    assert.deepEqual(await values(page, "#top-keys tbody tr td:nth-of-type(4)"), top.slice(0, 10).map((item) => item.total_tokens));

    // A narrower range: fewer rows, and the page still shows exactly the API's totals.
    await page.selectOption("#usage-bucket", "day");
    await page.fill("#usage-from", today);
    await page.click("#usage-form button[type=submit]");
    await page.locator(`#panel-usage[data-since^="${today}"]`).waitFor();
    const todayOnly = await adminGet(`/v1/usage?${new URLSearchParams({ since: `${today}T00:00:00+00:00`, until, group_by: "key" })}`);
    assert.equal(await value(page, "#usage-totals [data-field=total_tokens]"), todayOnly.totals.total_tokens);
    assert.ok(todayOnly.totals.total_tokens < dbTotals.total_tokens);
    result({ test: "usage", since, until, totals: byModel.totals });
  });

  for (const colorScheme of /** @type {const} */ (["light", "dark"])) {
    test(`no serious or critical accessibility violation (${colorScheme}), usable at 375 px; screenshot`, async () => {
      /** @type {Record<string, string[]>} */
      const found = {};
      const scan = async (/** @type {import("playwright-core").Page} */ page, /** @type {string} */ where) => {
        const bad = await seriousViolations(page);
        if (bad.length) found[where] = bad;
      };

      const login = await newPage({ colorScheme });
      await scan(login, "key prompt");
      await login.fill("#admin-key", "wrong");
      await login.click("#login-form button[type=submit]");
      await login.locator("#login-error", { hasText: "did not accept" }).waitFor();
      await scan(login, "key prompt with an error");

      const page = await openConsole({ colorScheme });
      await page.locator("#tokens-chart canvas").waitFor();
      await page.waitForTimeout(300); // uPlot draws on the next frame
      mkdirSync(screenshotDir, { recursive: true });
      await page.screenshot({ path: join(screenshotDir, `admin-${colorScheme}.png`), fullPage: true });
      await scan(page, "usage");
      await selectTab(page, "keys");
      await page.locator("#keys-table tbody tr[data-key-id]").first().waitFor();
      await scan(page, "keys");
      mkdirSync(artifactDir, { recursive: true });
      await page.screenshot({ path: join(artifactDir, `admin-keys-${colorScheme}.png`), fullPage: true });
      await page.click("#key-create");
      await page.locator("#key-models-list input").first().waitFor();
      await scan(page, "create dialog");
      await page.click("#key-cancel");
      const active = page.locator("#keys-table tbody tr[data-state=active] button[data-action=revoke]").first();
      await active.click();
      await scan(page, "revoke dialog");
      await page.click("#revoke-cancel");
      await selectTab(page, "live");
      await page.locator("#live-cards [data-field=streams_total]").waitFor();
      await scan(page, "live");
      await page.screenshot({ path: join(artifactDir, `admin-live-${colorScheme}.png`), fullPage: true });
      assert.deepEqual(found, {}, "axe-core: no serious or critical violation");

      // A phone's width: nothing wider than the screen, on every tab.
      const phone = await openConsole({ colorScheme, width: 375, height: 740 });
      for (const tab of ["usage", "keys", "live"]) {
        await selectTab(phone, tab);
        await phone.waitForTimeout(200);
        const width = await phone.evaluate(() => document.documentElement.scrollWidth);
        assert.ok(width <= 375, `${tab} at 375 px is ${width} px wide`);
        await phone.screenshot({ path: join(artifactDir, `admin-${tab}-375-${colorScheme}.png`), fullPage: true });
      }
      result({ test: `a11y-${colorScheme}` });
    });
  }

  test("a created key's secret is shown once and works; edits apply; a revoked key is refused within the cache time", async () => {
    const page = await openConsole();
    await selectTab(page, "keys");
    await page.locator("#keys-table tbody tr[data-key-id]").first().waitFor();
    // The seeded keys: their spending is the database's, budgets as meters with the numbers.
    for (const [id, tokens] of Object.entries(dbTotals.by_key)) {
      if (id === "") continue;
      const spend = page.locator(`#keys-table tr[data-key-id="${id}"] .spend[data-unit=tokens]`);
      assert.equal(Number(await spend.getAttribute("data-spent")), tokens);
    }
    assert.ok((await page.locator("#keys-table meter").count()) >= 3, "budgets are shown as meters");

    await page.click("#key-create");
    await page.locator("#key-dialog[open]").waitFor();
    await page.fill("#key-name", "browser-test");
    await page.fill("#key-rpm", "100");
    await page.click("#key-save");
    await page.locator("#secret-dialog[open]").waitFor();
    const secret = await page.inputValue("#secret-value");
    assert.match(secret, /^trk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}$/);
    assert.match((await page.locator("#secret-warning").textContent()) ?? "", /shown only this once/);
    await page.click("#secret-copy");
    await page.locator("#secret-copied", { hasText: "Copied" }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret, "the copy button copies the key");
    await page.click("#secret-done");
    await page.locator("#secret-dialog").waitFor({ state: "hidden" });
    await waitUntil(async () => ((await page.evaluate(() => document.activeElement?.id)) === "key-create" ? true : undefined), 2000);

    // Gone from the page: not in the markup, any field, or storage.
    const leftovers = await page.evaluate((s) => ({
      html: document.documentElement.outerHTML.includes(s),
      fields: [...document.querySelectorAll("input")].some((i) => i.value.includes(s)),
      storage: [...Object.values(sessionStorage), ...Object.values(localStorage)].some((v) => v.includes(s)),
    }), secret);
    assert.deepEqual(leftovers, { html: false, fields: false, storage: false });
    const prefix = secret.slice(0, 12);
    const row = page.locator("#keys-table tbody tr").first();
    assert.equal(await row.locator("code").textContent(), prefix, "newest first");
    assert.equal(await row.getAttribute("data-state"), "active");
    const keyId = /** @type {string} */ (await row.getAttribute("data-key-id"));

    // The key works for a chat request.
    const answer = await chat(secret, "fast");
    assert.equal(answer.status, 200);
    assert.match(await answer.text(), /"type":\s*"done"/);
    const requestId = answer.headers.get("x-request-id");

    // Edit: only "fast", at most 3 streams at once; the API has it, and the gateway applies it.
    await row.getByRole("button", { name: "Edit browser-test" }).click();
    await page.locator("#key-dialog[open]").waitFor();
    assert.equal(await page.inputValue("#key-rpm"), "100", "the form shows the key's limits");
    await page.getByRole("checkbox", { name: "fast", exact: true }).check();
    await page.fill("#key-max-concurrent", "3");
    await page.click("#key-save");
    await page.locator("#key-dialog").waitFor({ state: "hidden" });
    await page.locator(`#keys-table tr[data-key-id="${keyId}"]`, { hasText: "models: fast" }).waitFor();
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("aria-label")), "Edit browser-test", "the focus is back where it was");
    const edited = (await adminGet("/v1/admin/keys")).data.find((/** @type {any} */ k) => k.id === keyId);
    assert.deepEqual([edited.models, edited.max_concurrent, edited.rpm, edited.budget_tokens], [["fast"], 3, 100, null]);
    await waitUntil(async () => ((await chat(secret, "paced")).status === 403 ? true : undefined), keyCacheMs + 2000);

    // Revoke: asked first (Cancel keeps the key), then refused within the key cache time.
    await page.locator(`#keys-table tr[data-key-id="${keyId}"]`).getByRole("button", { name: "Revoke browser-test" }).click();
    await page.locator("#revoke-dialog[open]").waitFor();
    assert.match((await page.locator("#revoke-text").textContent()) ?? "", new RegExp(prefix));
    assert.equal(await page.evaluate(() => document.activeElement?.id), "revoke-cancel", "the safe choice has the focus");
    await page.click("#revoke-cancel");
    assert.equal((await chat(secret, "fast")).status, 200, "cancelled: still works");
    await page.locator(`#keys-table tr[data-key-id="${keyId}"]`).getByRole("button", { name: "Revoke browser-test" }).click();
    await page.click("#revoke-confirm");
    const revokedAt = Date.now();
    await page.locator(`#keys-table tr[data-key-id="${keyId}"][data-state=revoked]`).waitFor();
    const refusedAfter = await waitUntil(async () => {
      const response = await chat(secret, "fast");
      return response.status === 401 ? Date.now() - revokedAt : undefined;
    }, keyCacheMs + 2000);
    assert.ok(refusedAfter <= keyCacheMs + 1000, `refused ${refusedAfter} ms after the revocation`);
    assert.ok(await page.locator(`#keys-table tr[data-key-id="${keyId}"] button[data-action=revoke]`).isDisabled());
    result({ test: "keys", key_id: keyId, prefix, secret, request_id: requestId, refused_after_ms: refusedAfter });
  });

  test("the live view counts a known workload and marks an ejected deployment", async () => {
    const page = await openConsole();
    /** @type {number[]} */
    const summaryCalls = [];
    page.on("request", (request) => {
      if (request.url().endsWith("/v1/admin/summary")) summaryCalls.push(Date.now());
    });
    await selectTab(page, "live");
    await page.locator("#live-cards [data-field=streams_total]").waitFor();
    const before = await page.evaluate(() => document.getElementById("live-updated")?.dataset.generatedAt);
    const total0 = await value(page, "#live-cards [data-field=streams_total]");
    const disconnects0 = await sum(page, "#live-disconnects td[data-value]");
    const statuses0 = await sum(page, "#live-statuses td[data-value]");
    assert.equal(await value(page, "#live-cards [data-field=streams_in_flight]"), 0);

    // Three long streams: the page shows them in flight.
    const controllers = [0, 1, 2].map(() => new AbortController());
    const streams = await Promise.all(controllers.map((c) => chat(adminKey, "slow", c.signal)));
    assert.deepEqual(streams.map((r) => r.status), [200, 200, 200]);
    await waitForValue(page, "#live-cards [data-field=streams_in_flight]", 3);
    assert.equal(await value(page, "#live-models tr[data-model=slow] [data-field=in_flight]"), 3);
    assert.notEqual(await page.evaluate(() => document.getElementById("live-updated")?.dataset.generatedAt), before, "refreshed by itself");

    // Their clients leave; two requests fail upstream; two are served by a fallback deployment,
    // whose broken primary is ejected after its second failure.
    for (const c of controllers) c.abort();
    for (const model of ["error500", "error500", "gpt-sim", "gpt-sim"]) await (await chat(adminKey, model)).text();
    await waitForValue(page, "#live-cards [data-field=streams_in_flight]", 0);
    await waitUntil(async () => ((await value(page, "#live-cards [data-field=streams_total]")) === total0 + 7 ? true : undefined), 10_000);
    assert.equal(await sum(page, "#live-disconnects td[data-value]"), disconnects0 + 3, "three disconnects");
    assert.equal(await sum(page, "#live-statuses td[data-value]"), statuses0 + 7, "seven ended streams");
    assert.ok((await sum(page, "#live-errors td[data-value]")) >= 2, "the upstream errors are counted by class");
    assert.equal(await value(page, "#live-models tr[data-model=gpt-sim] [data-field=streams]"), 2);
    const ejected = page.locator("#live-deployments tr[data-model=gpt-sim][data-deployment=primary]");
    await ejected.and(page.locator("[data-state=ejected]")).waitFor({ timeout: 10_000 });
    assert.match((await ejected.textContent()) ?? "", /EJECTED/, "said in words, not only in colour");
    assert.equal(await page.locator("#live-deployments tr[data-model=gpt-sim][data-deployment=backup]").getAttribute("data-state"), "up");
    // The page shows what the API says.
    assert.deepEqual(await seriousViolations(page), [], "axe-core, with an ejected deployment shown");
    mkdirSync(artifactDir, { recursive: true });
    await page.screenshot({ path: join(artifactDir, "admin-live-workload.png"), fullPage: true });
    const summary = await adminGet("/v1/admin/summary");
    assert.equal(summary.streams_total, total0 + 7);
    assert.equal(await value(page, "#live-ledger [data-field=spooled_rows]"), summary.ledger.spooled_rows);

    // Polling: about every 3 s on the Live tab, never on another tab.
    const shown = summaryCalls.filter((t) => t > Date.now() - 9000).length;
    assert.ok(shown >= 2 && shown <= 5, `${shown} summaries in 9 s`);
    await selectTab(page, "usage");
    const hiddenFrom = summaryCalls.length;
    await new Promise((resolve) => setTimeout(resolve, 4000));
    assert.equal(summaryCalls.length, hiddenFrom, "no polling while the Live tab is not shown");
    result({ test: "live", streams_total: summary.streams_total });
  });

  test("the tabs are a tablist operated by the keyboard", async () => {
    const page = await openConsole();
    assert.deepEqual(
      await page.locator("[role=tab]").evaluateAll((tabs) => tabs.map((t) => [t.tagName, t.textContent, t.getAttribute("aria-selected")])),
      [["BUTTON", "Usage", "true"], ["BUTTON", "Keys", "false"], ["BUTTON", "Live", "false"]]);
    await page.focus("#tab-usage");
    for (const [key, tab] of [["ArrowRight", "keys"], ["ArrowRight", "live"], ["ArrowRight", "usage"], ["ArrowLeft", "live"], ["Home", "usage"], ["End", "live"]]) {
      await page.keyboard.press(key);
      assert.equal(await page.evaluate(() => document.activeElement?.id), `tab-${tab}`, `${key} moves the focus`);
      assert.equal(await page.getAttribute(`#tab-${tab}`, "aria-selected"), "true");
      assert.ok(await page.locator(`#panel-${tab}`).isVisible(), `${key} shows ${tab}`);
      assert.equal(await page.locator("[role=tabpanel]:visible").count(), 1);
    }
    // One tab stop for the whole list: Tab leaves it for the panel.
    assert.deepEqual(await page.locator("[role=tab]").evaluateAll((tabs) => tabs.map((t) => t.getAttribute("tabindex"))), ["-1", "-1", "0"]);
    await page.keyboard.press("Tab");
    assert.notEqual(await page.evaluate(() => document.activeElement?.getAttribute("role")), "tab");
    result({ test: "tabs" });
  });

  /** @param {import("playwright-core").Page} page @param {string} selector */
  async function sum(page, selector) {
    return (await values(page, selector)).reduce((a, b) => a + b, 0);
  }

  /** @param {import("playwright-core").Page} page @param {string} selector @param {number} want */
  async function waitForValue(page, selector, want) {
    await waitUntil(async () => {
      const raw = await page.locator(selector).getAttribute("data-value");
      return Number(raw) === want ? true : undefined;
    }, 10_000, 100);
  }
});
