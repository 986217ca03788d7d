// Charts drawn as SVG from the API's figures (no chart library). Each chart is an image
// with a text alternative; the table beside it carries every number exactly.
import { h, s, usd } from "./dom.js";

// Colour-blind-safe palette (Okabe–Ito), darkened where needed for contrast on white.
export const COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#8a6d00", "#56B4E9", "#6b6b6b"];

const money = (text) => Number(text);

// Cost per day, stacked by series (the largest few workloads, the rest as "other").
export function stackedArea(days, series, { width = 1100, height = 260, label }) {
  const pad = { left: 56, right: 12, top: 12, bottom: 28 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const totals = days.map((d) => series.reduce((sum, key) => sum + valueOf(d, key, series), 0));
  const top = niceCeiling(Math.max(...totals, 0.01));
  const x = (i) => pad.left + (days.length === 1 ? plotW / 2 : (i * plotW) / (days.length - 1));
  const y = (v) => pad.top + plotH - (v / top) * plotH;
  const layers = [];
  const base = days.map(() => 0);
  series.forEach((key, index) => {
    const upper = days.map((d, i) => base[i] + valueOf(d, key, series));
    const points = [
      ...upper.map((v, i) => `${x(i)},${y(v)}`),
      ...base.map((v, i) => `${x(i)},${y(v)}`).reverse(),
    ];
    layers.push(s("polygon", { points: points.join(" "), fill: COLOURS[index % COLOURS.length], opacity: 0.85 }));
    upper.forEach((v, i) => (base[i] = v));
  });
  const ticks = [0, top / 2, top].map((v) =>
    s("g", {},
      s("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), stroke: "#d0d5dd" }),
      s("text", { x: pad.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, usd(v.toFixed(2))),
    ),
  );
  const labels = days.length
    ? [0, days.length - 1].map((i) =>
        s("text", { x: x(i), y: height - 8, "text-anchor": i ? "end" : "start", class: "tick" }, days[i].day),
      )
    : [];
  return h("figure", { class: "chart" },
    s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label }, ticks, layers, labels),
    legend(series),
  );
}

function valueOf(day, key, series) {
  if (key !== "other") return money(day.workloads[key] ?? 0);
  return Object.entries(day.workloads)
    .filter(([name]) => !series.includes(name))
    .reduce((sum, [, v]) => sum + money(v), 0);
}

export function legend(series) {
  return h("figcaption", { class: "legend" },
    series.map((key, i) =>
      h("span", {}, h("span", { class: "swatch", dataset: { colour: String(i % COLOURS.length) } }), key),
    ),
  );
}

// Horizontal bars, one per item, labelled with its exact amount.
export function bars(items, { label, name }) {
  const width = 540;
  const row = 28;
  const height = items.length * row + 8;
  const largest = Math.max(...items.map((i) => money(i.cost_usd)), 0.01);
  const labelW = 190;
  return h("figure", { class: "chart" },
    s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label },
      items.map((item, i) => {
        const w = Math.max(2, ((width - labelW - 80) * money(item.cost_usd)) / largest);
        const y = 4 + i * row;
        return s("g", {},
          s("text", { x: labelW - 8, y: y + 17, "text-anchor": "end", class: "bar-label" }, truncate(name(item), 26)),
          s("rect", { x: labelW, y: y + 4, width: w, height: row - 10, rx: 3, fill: COLOURS[i % COLOURS.length] }),
          s("text", { x: labelW + w + 6, y: y + 17, class: "bar-value" }, usd(item.cost_usd)),
        );
      }),
    ),
  );
}

function truncate(text, size) {
  return text.length > size ? `${text.slice(0, size - 1)}…` : text;
}

function niceCeiling(value) {
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * magnitude) return step * magnitude;
  return 10 * magnitude;
}
