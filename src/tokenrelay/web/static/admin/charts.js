// Line charts with the vendored uPlot. uPlot draws on a canvas and sets element.style from JS
// (allowed by the page's CSP; style attributes in markup are not). The legend is our own list:
// uPlot's would be a second, less readable table next to the one under each chart.
import uPlot from "../vendor/uPlot.esm.js";

import { clear, h } from "./format.js";

// Distinguishable on both the light and the dark background (and not by hue alone: the table
// under each chart carries every number).
const PALETTE = ["#2f6feb", "#d9480f", "#2b8a3e", "#ae3ec9", "#e67700", "#0c8599", "#c2255c", "#5c7cfa"];

/** @param {number} index */
export function seriesColor(index) {
  return PALETTE[index % PALETTE.length];
}

/** @param {string} name */
function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

/**
 * @typedef {{label: string, values: (number | null)[]}} Series
 * @typedef {{xs: number[], series: Series[], format: (v: number) => string, bucket: "day" | "hour"}} ChartData
 */

/** A chart in ``container`` that follows the container's width and the colour scheme. */
export class LineChart {
  /**
   * @param {HTMLElement} container
   * @param {HTMLElement} legend
   */
  constructor(container, legend) {
    this.container = container;
    this.legend = legend;
    /** @type {uPlot | null} */
    this.plot = null;
    /** @type {ChartData | null} */
    this.data = null;
    new ResizeObserver(() => this.resize()).observe(container);
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.draw());
  }

  /** @param {ChartData} data */
  set(data) {
    this.data = data;
    this.draw();
  }

  size() {
    const width = Math.max(240, Math.floor(this.container.clientWidth));
    return { width, height: width < 500 ? 200 : 260 };
  }

  resize() {
    if (!this.plot) return;
    const { width, height } = this.size();
    if (width !== this.plot.width) this.plot.setSize({ width, height });
  }

  draw() {
    this.plot?.destroy();
    this.plot = null;
    clear(this.container);
    clear(this.legend);
    const data = this.data;
    if (!data) return;
    if (data.xs.length === 0 || data.series.length === 0) {
      this.container.append(h("p", { class: "empty" }, "No usage in this range."));
      return;
    }
    const text = cssVar("--muted");
    const grid = cssVar("--grid");
    const axis = {
      stroke: text,
      grid: { stroke: grid, width: 1 },
      ticks: { stroke: grid, width: 1 },
    };
    const { width, height } = this.size();
    /** @type {uPlot.Options} */
    const options = {
      width,
      height,
      legend: { show: false },
      // The buckets are UTC days or hours: label them in UTC, whatever the browser's zone.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [
        { ...axis },
        { ...axis, size: 72, values: (_u, ticks) => ticks.map((v) => data.format(v)) },
      ],
      series: [
        {},
        ...data.series.map((s, i) => ({
          label: s.label,
          stroke: seriesColor(i),
          width: 2,
          points: { show: data.xs.length <= 60, size: 5 },
          value: (/** @type {any} */ _u, /** @type {number | null} */ v) => (v === null ? "—" : data.format(v)),
        })),
      ],
    };
    this.plot = new uPlot(options, [data.xs, ...data.series.map((s) => s.values)], this.container);
    for (const [i, s] of data.series.entries()) {
      const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.backgroundColor = seriesColor(i);
      this.legend.append(h("li", {}, swatch, s.label));
    }
  }
}
