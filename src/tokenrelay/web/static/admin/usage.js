// The Usage tab: tokens and cost over time from GET /v1/usage, split by model, key or
// deployment, each chart with its numbers in a table, top keys, and a CSV of what is shown.
//
// Every number comes from the API as it answered: the cells from the split report, the row
// totals from the report grouped by time alone, the column totals from the report grouped by
// the split alone, and the grand totals from its "totals". The page adds nothing up itself,
// so what it shows equals /v1/usage exactly.
import { api } from "./api.js";
import { LineChart } from "./charts.js";
import { clear, formatInt, formatUsd, h, isoDate, numberCell } from "./format.js";

const DAY_MS = 86_400_000;
const HOUR_MS = 3_600_000;
const FIELDS = /** @type {const} */ (["streams", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"]);
const FIELD_LABELS = {
  streams: "Streams",
  prompt_tokens: "Prompt tokens",
  completion_tokens: "Completion tokens",
  total_tokens: "Total tokens",
  cost_usd: "Cost (USD)",
};

/**
 * @typedef {{streams: number, prompt_tokens: number, completion_tokens: number, total_tokens: number,
 *   cost_usd: number, group?: string | null, [k: string]: unknown}} UsageItem
 * @typedef {{data: UsageItem[], totals: UsageItem, since: string | null, until: string | null}} UsageReport
 */

/** @param {Document} doc */
function $(doc, /** @type {string} */ id) {
  const element = doc.getElementById(id);
  if (!element) throw new Error(`#${id} is missing`);
  return element;
}

/** The bucket of an item: its "day"/"hour" field with split_by, "group" without. */
function bucketOf(/** @type {UsageItem} */ item, /** @type {string} */ bucket) {
  const value = item[bucket] ?? item.group;
  return value === null || value === undefined ? "" : String(value);
}

/** The split value of an item (null: no key, e.g. the admin key or auth off). */
function splitOf(/** @type {UsageItem} */ item, /** @type {string} */ split) {
  const value = split in item ? item[split] : item.group;
  return value === null || value === undefined ? null : String(value);
}

/** Milliseconds since the epoch of a bucket string. */
function bucketTime(/** @type {string} */ value, /** @type {string} */ bucket) {
  return bucket === "day" ? Date.parse(`${value}T00:00:00Z`) : Date.parse(value);
}

function bucketLabel(/** @type {string} */ value, /** @type {string} */ bucket) {
  if (bucket === "day") return value;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? value : new Date(ms).toISOString().slice(0, 16).replace("T", " ");
}

/** @param {unknown} value */
function csvField(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export class UsagePanel {
  /**
   * @param {{onError: (error: unknown, where: HTMLElement) => void, keyLabels: () => Promise<Map<string, string>>}} deps
   */
  constructor({ onError, keyLabels }) {
    this.onError = onError;
    this.keyLabels = keyLabels;
    this.panel = $(document, "panel-usage");
    this.form = /** @type {HTMLFormElement} */ ($(document, "usage-form"));
    this.from = /** @type {HTMLInputElement} */ ($(document, "usage-from"));
    this.to = /** @type {HTMLInputElement} */ ($(document, "usage-to"));
    this.bucket = /** @type {HTMLSelectElement} */ ($(document, "usage-bucket"));
    this.split = /** @type {HTMLSelectElement} */ ($(document, "usage-split"));
    this.csv = /** @type {HTMLAnchorElement} */ ($(document, "usage-csv"));
    this.error = $(document, "usage-error");
    this.totals = $(document, "usage-totals");
    this.tokensChart = new LineChart($(document, "tokens-chart"), $(document, "tokens-legend"));
    this.costChart = new LineChart($(document, "cost-chart"), $(document, "cost-legend"));
    this.tokensTable = /** @type {HTMLTableElement} */ ($(document, "tokens-table"));
    this.costTable = /** @type {HTMLTableElement} */ ($(document, "cost-table"));
    this.topKeys = /** @type {HTMLTableElement} */ ($(document, "top-keys"));
    /** @type {string | null} */
    this.csvUrl = null;
    this.loaded = false;
    this.generation = 0;

    // The last 7 days, today included (UTC).
    const today = new Date();
    this.to.value = isoDate(today);
    this.from.value = isoDate(new Date(today.getTime() - 6 * DAY_MS));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.load();
    });
    for (const control of [this.bucket, this.split]) control.addEventListener("change", () => void this.load());
  }

  /** The range as the API takes it: [from 00:00, day after to 00:00) in UTC. */
  range() {
    const since = `${this.from.value}T00:00:00+00:00`;
    const until = new Date(Date.parse(`${this.to.value}T00:00:00Z`) + DAY_MS).toISOString().replace(".000Z", "+00:00");
    return { since, until };
  }

  /** Load once, when the tab is first shown. */
  async show() {
    if (!this.loaded) await this.load();
  }

  async load() {
    this.error.textContent = "";
    if (!this.from.value || !this.to.value || this.from.value > this.to.value) {
      this.error.textContent = "Choose a start date on or before the end date.";
      return;
    }
    const generation = ++this.generation;
    const bucket = this.bucket.value;
    const split = this.split.value;
    const { since, until } = this.range();
    const query = (/** @type {Record<string, string>} */ extra) =>
      `/v1/usage?${new URLSearchParams({ since, until, ...extra })}`;
    this.panel.setAttribute("aria-busy", "true");
    try {
      /** @type {[UsageReport, UsageReport, UsageReport, UsageReport, Map<string, string>]} */
      const [cells, rows, columns, byKey, labels] = await Promise.all([
        api(query({ group_by: bucket, split_by: split })),
        api(query({ group_by: bucket })),
        api(query({ group_by: split })),
        split === "key" ? Promise.resolve(null) : api(query({ group_by: "key" })),
        this.keyLabels(),
      ]);
      if (generation !== this.generation) return; // a newer request replaced this one
      const label = (/** @type {string | null} */ value) =>
        split === "key" ? keyLabel(labels, value) : value ?? "(none)";
      this.renderTotals(columns.totals);
      const columnItems = [...columns.data].sort((a, b) => b.total_tokens - a.total_tokens);
      const splits = columnItems.map((item) => splitOf(item, "group"));
      const ctx = { cells: cells.data, rows: rows.data, columnItems, splits, label, bucket, split, totals: columns.totals };
      this.renderTable(this.tokensTable, "total_tokens", ctx);
      this.renderTable(this.costTable, "cost_usd", ctx);
      this.renderCharts(ctx, since, until);
      this.renderTopKeys(split === "key" ? columns : byKey, labels);
      this.renderCsv(cells.data, { bucket, split, label });
      this.panel.dataset.since = since;
      this.panel.dataset.until = until;
      this.loaded = true;
    } catch (error) {
      if (generation === this.generation) this.onError(error, this.error);
    } finally {
      if (generation === this.generation) this.panel.removeAttribute("aria-busy");
    }
  }

  /** @param {UsageItem} totals */
  renderTotals(totals) {
    clear(this.totals);
    for (const field of FIELDS) {
      const value = totals[field];
      this.totals.append(
        h("div", { class: "card" },
          h("dt", {}, FIELD_LABELS[field]),
          h("dd", { "data-field": field, "data-value": String(value) },
            field === "cost_usd" ? formatUsd(value) : formatInt(value))),
      );
    }
  }

  /**
   * One row per time bucket with usage, one column per split value, totals from the API.
   * @param {HTMLTableElement} table
   * @param {"total_tokens" | "cost_usd"} field
   * @param {{cells: UsageItem[], rows: UsageItem[], columnItems: UsageItem[], splits: (string | null)[],
   *   label: (v: string | null) => string, bucket: string, split: string, totals: UsageItem}} ctx
   */
  renderTable(table, field, ctx) {
    const format = field === "cost_usd" ? formatUsd : formatInt;
    const caption = table.caption;
    clear(table);
    if (caption) table.append(caption);
    const byCell = new Map(ctx.cells.map((item) => [`${bucketOf(item, ctx.bucket)}\u0000${splitOf(item, ctx.split)}`, item]));
    const head = h("tr", {}, h("th", { scope: "col" }, ctx.bucket === "day" ? "Day (UTC)" : "Hour (UTC)"));
    for (const value of ctx.splits) head.append(h("th", { scope: "col" }, ctx.label(value)));
    head.append(h("th", { scope: "col" }, "Total"));
    table.append(h("thead", {}, head));
    const body = h("tbody");
    for (const row of ctx.rows) {
      const bucket = bucketOf(row, ctx.bucket);
      const tr = h("tr", { "data-bucket": bucket }, h("th", { scope: "row" }, bucketLabel(bucket, ctx.bucket)));
      for (const value of ctx.splits) {
        const cell = byCell.get(`${bucket}\u0000${value}`);
        const td = numberCell(cell ? cell[field] : 0, format);
        td.dataset.split = value ?? "";
        tr.append(td);
      }
      const total = numberCell(row[field], format);
      total.dataset.split = "*";
      tr.append(total);
      body.append(tr);
    }
    if (ctx.rows.length === 0) {
      body.append(h("tr", {}, h("td", { colspan: ctx.splits.length + 2, class: "empty" }, "No usage in this range.")));
    }
    table.append(body);
    const foot = h("tr", { "data-bucket": "*" }, h("th", { scope: "row" }, "Total"));
    for (const item of ctx.columnItems) {
      const td = numberCell(item[field], format);
      td.dataset.split = splitOf(item, "group") ?? "";
      foot.append(td);
    }
    const grand = numberCell(ctx.totals[field], format);
    grand.dataset.split = "*";
    foot.append(grand);
    table.append(h("tfoot", {}, foot));
  }

  /**
   * @param {{cells: UsageItem[], splits: (string | null)[], label: (v: string | null) => string, bucket: string, split: string}} ctx
   * @param {string} since
   * @param {string} until
   */
  renderCharts(ctx, since, until) {
    // Every bucket of the range, empty ones at zero: a quiet day is a zero, not a gap.
    const step = ctx.bucket === "day" ? DAY_MS : HOUR_MS;
    const xs = [];
    for (let t = Date.parse(since); t < Date.parse(until); t += step) xs.push(t / 1000);
    const index = new Map(xs.map((x, i) => [x, i]));
    /** @param {"total_tokens" | "cost_usd"} field */
    const series = (field) =>
      ctx.splits.map((value) => {
        const values = xs.map(() => /** @type {number | null} */ (0));
        for (const item of ctx.cells) {
          if (splitOf(item, ctx.split) !== value) continue;
          const i = index.get(bucketTime(bucketOf(item, ctx.bucket), ctx.bucket) / 1000);
          if (i !== undefined) values[i] = item[field];
        }
        return { label: ctx.label(value), values };
      });
    const bucket = /** @type {"day" | "hour"} */ (ctx.bucket);
    this.tokensChart.set({ xs, series: series("total_tokens"), format: compactInt, bucket });
    this.costChart.set({ xs, series: series("cost_usd"), format: compactUsd, bucket });
  }

  /**
   * @param {UsageReport | null} report
   * @param {Map<string, string>} labels
   */
  renderTopKeys(report, labels) {
    const body = clear(this.topKeys.tBodies[0]);
    const items = [...(report?.data ?? [])].sort((a, b) => b.total_tokens - a.total_tokens).slice(0, 10);
    for (const item of items) {
      const id = splitOf(item, "group");
      body.append(
        h("tr", { "data-key-id": id ?? "" },
          h("th", { scope: "row" }, keyLabel(labels, id)),
          numberCell(item.streams),
          numberCell(item.prompt_tokens),
          numberCell(item.completion_tokens),
          numberCell(item.total_tokens),
          numberCell(item.cost_usd, formatUsd)),
      );
    }
    if (items.length === 0) body.append(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No usage in this range.")));
  }

  /**
   * @param {UsageItem[]} items
   * @param {{bucket: string, split: string, label: (v: string | null) => string}} ctx
   */
  renderCsv(items, { bucket, split, label }) {
    const lines = [[bucket, split, "label", ...FIELDS].join(",")];
    for (const item of items) {
      const value = splitOf(item, split);
      lines.push([bucketOf(item, bucket), value, label(value), ...FIELDS.map((f) => item[f])].map(csvField).join(","));
    }
    if (this.csvUrl) URL.revokeObjectURL(this.csvUrl);
    this.csvUrl = URL.createObjectURL(new Blob([`${lines.join("\r\n")}\r\n`], { type: "text/csv" }));
    this.csv.href = this.csvUrl;
    this.csv.download = `tokenrelay-usage-${this.from.value}-to-${this.to.value}-per-${bucket}-by-${split}.csv`;
    this.csv.removeAttribute("aria-disabled");
  }
}

/**
 * "name (prefix)" for a key id; the id itself for a key no longer listed.
 * @param {Map<string, string>} labels
 * @param {string | null} id
 */
function keyLabel(labels, id) {
  if (id === null) return "(no key: admin or auth off)";
  return labels.get(id) ?? id;
}

/** @param {number} v */
function compactInt(v) {
  return v.toLocaleString("en-US", { notation: "compact", maximumFractionDigits: 1 });
}

/** @param {number} v */
function compactUsd(v) {
  return `$${v.toLocaleString("en-US", { notation: "compact", maximumFractionDigits: 2 })}`;
}
