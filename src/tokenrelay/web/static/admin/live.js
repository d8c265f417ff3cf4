// The Live tab: GET /v1/admin/summary every few seconds while the tab is shown and the page
// visible (a hidden page polls nothing: an open console left in a background tab costs nothing).
import { api } from "./api.js";
import { clear, formatDuration, formatInt, formatMs, formatRate, h, numberCell } from "./format.js";

export const LIVE_INTERVAL_MS = 3000;

/** @param {string} id */
function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing`);
  return element;
}

/** How a deployment state is shown: out of service (ejected) in alarm colours and capitals,
 * a probe in progress as a warning, anything else plainly. Never by colour alone. */
function stateLook(/** @type {string} */ state) {
  if (state === "ejected") return { row: "down", badge: "state state-down", text: `⚠ EJECTED` };
  if (state === "probing") return { row: "probing", badge: "state state-probing", text: "probing (one request decides)" };
  if (state === "up") return { row: null, badge: "state state-active", text: "up" };
  return { row: null, badge: "state state-unknown", text: state };
}

/** @param {unknown} value */
function plain(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") return formatInt(value);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export class LivePanel {
  /** @param {{onError: (error: unknown, where: HTMLElement) => void}} deps */
  constructor({ onError }) {
    this.onError = onError;
    this.error = byId("live-error");
    this.updated = byId("live-updated");
    this.cards = byId("live-cards");
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.timer = null;
    this.active = false;
    this.inFlight = false;
    document.addEventListener("visibilitychange", () => this.schedule(0));
  }

  /** The tab is shown: poll. */
  start() {
    this.active = true;
    this.schedule(0);
  }

  /** The tab is hidden (or the key refused): stop polling. */
  stop() {
    this.active = false;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  /** @param {number} delay */
  schedule(delay) {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (!this.active || document.visibilityState !== "visible") return;
    this.timer = setTimeout(() => void this.tick(), delay);
  }

  async tick() {
    this.timer = null;
    if (this.inFlight) return;
    this.inFlight = true;
    try {
      const summary = await api("/v1/admin/summary");
      this.error.textContent = "";
      this.render(summary);
    } catch (error) {
      this.onError(error, this.error);
    } finally {
      this.inFlight = false;
      // After the answer, not on a fixed clock: a slow gateway is not asked twice at once.
      if (this.active) this.schedule(LIVE_INTERVAL_MS);
    }
  }

  /** @param {any} s the summary */
  render(s) {
    const at = typeof s.generated_at === "string" ? new Date(s.generated_at) : new Date();
    this.updated.textContent = `Updated ${at.toISOString().slice(11, 19)} UTC; gateway up ${formatDuration(s.uptime_seconds)}.`;
    this.updated.dataset.generatedAt = s.generated_at ?? "";

    clear(this.cards);
    const card = (/** @type {string} */ field, /** @type {string} */ label, /** @type {unknown} */ value, /** @type {string} */ text) =>
      this.cards.append(h("div", { class: "card" }, h("dt", {}, label),
        h("dd", { "data-field": field, "data-value": value === null || value === undefined ? "" : String(value) }, text)));
    card("streams_in_flight", "Streams in flight", s.streams_in_flight, formatInt(s.streams_in_flight));
    card("streams_per_second", "Streams per second", s.streams_per_second, formatRate(s.streams_per_second));
    card("ttft_p50", "Time to first token p50", s.ttft_ms?.p50, formatMs(s.ttft_ms?.p50));
    card("ttft_p99", "Time to first token p99", s.ttft_ms?.p99, formatMs(s.ttft_ms?.p99));
    card("streams_total", "Streams since start", s.streams_total, formatInt(s.streams_total));

    this.counts("live-errors", s.errors, "No errors.");
    this.counts("live-disconnects", s.disconnects, "No disconnects.");
    this.counts("live-statuses", s.statuses, "No streams yet.");

    const models = clear(/** @type {HTMLTableElement} */ (byId("live-models")).tBodies[0]);
    // Every configured model is listed by the API; the idle ones are only counted here.
    const busy = (s.models ?? []).filter((/** @type {any} */ m) => m.streams || m.in_flight || m.errors || m.tokens);
    for (const m of busy) {
      models.append(h("tr", { "data-model": m.model },
        h("th", { scope: "row" }, m.model),
        field(numberCell(m.in_flight), "in_flight"),
        field(numberCell(m.streams), "streams"),
        field(numberCell(m.errors), "errors"),
        field(numberCell(m.tokens), "tokens"),
        field(numberCell(m.ttft_ms?.p50, formatMs), "ttft_p50")));
    }
    const idle = (s.models?.length ?? 0) - busy.length;
    if (idle > 0 || busy.length === 0) {
      models.append(h("tr", { class: "idle" }, h("td", { colspan: 6, class: "empty" },
        busy.length === 0 ? "No streams yet." : `${idle} more model${idle === 1 ? "" : "s"} without streams since the start.`)));
    }

    const deployments = clear(/** @type {HTMLTableElement} */ (byId("live-deployments")).tBodies[0]);
    // Out of service first: an ejected deployment is what an operator opens this tab for.
    const rank = (/** @type {any} */ d) => ({ ejected: 0, probing: 1 })[String(d.state)] ?? 2;
    const sorted = [...(s.deployments ?? [])].sort((a, b) => rank(a) - rank(b));
    for (const d of sorted) {
      const look = stateLook(String(d.state));
      deployments.append(h("tr", { "data-model": d.model, "data-deployment": d.deployment, "data-state": d.state, class: look.row },
        h("th", { scope: "row" }, d.model),
        h("td", {}, d.deployment),
        h("td", {}, h("span", { class: look.badge }, look.text)),
        field(numberCell(d.in_flight), "in_flight")));
    }
    if (!s.deployments?.length) deployments.append(h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No deployments.")));

    const ledger = s.ledger ?? {};
    this.pairs("live-ledger", [
      ["enabled", "Enabled", ledger.enabled],
      ["state", "State", ledger.state],
      ["spooled_rows", "Spool backlog (rows)", ledger.spooled_rows],
      ["write_failures", "Write failures", ledger.write_failures],
      ["dead_lettered", "Dead-lettered rows", ledger.dead_lettered],
    ], ledger.enabled !== false && ledger.state !== undefined && ledger.state !== "ok");
    this.generic("live-local", s.local_model, "No local model.");
    this.generic("live-cluster", s.cluster, "No cluster (one process, no Redis).");
  }

  /**
   * A table of {name: count}, largest first.
   * @param {string} id
   * @param {Record<string, number> | undefined} counts
   * @param {string} empty
   */
  counts(id, counts, empty) {
    const body = /** @type {HTMLTableElement} */ (byId(id)).tBodies[0] ?? byId(id).appendChild(h("tbody"));
    clear(body);
    const entries = Object.entries(counts ?? {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    for (const [name, count] of entries) {
      body.append(h("tr", { "data-name": name }, h("th", { scope: "row" }, name), numberCell(count)));
    }
    if (entries.length === 0) body.append(h("tr", {}, h("td", { class: "empty" }, empty)));
  }

  /**
   * @param {string} id
   * @param {[string, string, unknown][]} rows
   * @param {boolean} alarm
   */
  pairs(id, rows, alarm) {
    const list = clear(byId(id));
    list.classList.toggle("alarm", alarm);
    for (const [name, label, value] of rows) {
      list.append(h("div", {}, h("dt", {}, label),
        h("dd", { "data-field": name, "data-value": value === undefined || value === null ? "" : String(value) }, plain(value))));
    }
  }

  /**
   * An object of the summary shown as it is (its shape belongs to the gateway).
   * @param {string} id
   * @param {Record<string, unknown> | null | undefined} value
   * @param {string} empty
   */
  generic(id, value, empty) {
    if (!value || typeof value !== "object") {
      const list = clear(byId(id));
      list.classList.remove("alarm");
      list.append(h("div", {}, h("dt", {}, "State"), h("dd", { "data-field": "none" }, empty)));
      return;
    }
    const state = typeof value.state === "string" ? value.state : null;
    this.pairs(id, Object.entries(value).map(([k, v]) => [k, k.replaceAll("_", " "), v]), state !== null && !["ok", "ready", "up"].includes(state));
  }
}

/**
 * @param {HTMLElement} cell
 * @param {string} name
 */
function field(cell, name) {
  cell.dataset.field = name;
  return cell;
}
