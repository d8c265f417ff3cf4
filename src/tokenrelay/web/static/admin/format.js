// Small DOM and number helpers. Numbers are shown with toLocaleString, and every cell that
// shows one keeps the API's own value in data-value: what is tested, and what a copy should take.

/**
 * An element with attributes and children (strings become text nodes, never HTML).
 * @param {string} tag
 * @param {Record<string, string | number | boolean | null | undefined>} [attrs]
 * @param {...(Node | string | null | undefined)} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") element.className = String(value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    element.append(child);
  }
  return element;
}

/** @param {number | null | undefined} n */
export function formatInt(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
}

/** @param {number | null | undefined} usd */
export function formatUsd(usd) {
  if (usd === null || usd === undefined) return "—";
  return `$${Number(usd).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 6 })}`;
}

/** @param {number | null | undefined} ms */
export function formatMs(ms) {
  if (ms === null || ms === undefined) return "—";
  return `${Number(ms).toLocaleString("en-US", { maximumFractionDigits: 1 })} ms`;
}

/** @param {number | null | undefined} value */
export function formatRate(value) {
  if (value === null || value === undefined) return "—";
  return `${Number(value).toLocaleString("en-US", { maximumFractionDigits: 2 })}/s`;
}

/**
 * A number cell: the formatted text, the raw value in data-value.
 * @param {number | null | undefined} value
 * @param {(v: number | null | undefined) => string} [format]
 * @param {string} [tag]
 */
export function numberCell(value, format = formatInt, tag = "td") {
  return h(tag, { class: "num", "data-value": value === null || value === undefined ? "" : String(value) }, format(value));
}

/** @param {string | null | undefined} iso */
export function formatTime(iso) {
  if (!iso) return "never";
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) return iso;
  return `${moment.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

/** @param {number | null | undefined} seconds */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.floor(seconds);
  const parts = [];
  if (s >= 86400) parts.push(`${Math.floor(s / 86400)} d`);
  if (s >= 3600) parts.push(`${Math.floor((s % 86400) / 3600)} h`);
  if (s >= 60) parts.push(`${Math.floor((s % 3600) / 60)} min`);
  parts.push(`${s % 60} s`);
  return parts.slice(0, 2).join(" ");
}

/** @param {Element} element */
export function clear(element) {
  element.replaceChildren();
  return element;
}

/** A UTC calendar date as YYYY-MM-DD. @param {Date} date */
export function isoDate(date) {
  return date.toISOString().slice(0, 10);
}
