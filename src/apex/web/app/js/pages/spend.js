import * as api from "../api.js";
import { bars, stackedArea } from "../charts.js";
import { count, empty, h, panel, usd } from "../dom.js";
import { dataTable } from "../table.js";

const SERIES = 5; // the largest workloads drawn on their own; the rest is "other"

export async function spendPage() {
  const period = new URLSearchParams(location.hash.split("?")[1] ?? "").get("period");
  const spend = await api.get(`/usage/spend${period ? `?period=${encodeURIComponent(period)}` : ""}`);
  const heading = h("div", { class: "page-head" },
    h("h1", {}, "Where the money goes"),
    picker(spend),
  );
  if (spend.total.calls === 0) {
    return h("div", {}, heading, empty(
      `No LLM calls recorded for ${spend.period}. Send usage records (POST /api/v1/usage/events, or apex ingest FILE) and they appear here.`,
    ));
  }
  const top = spend.workloads.slice(0, SERIES).map((w) => w.workload);
  const series = spend.workloads.length > SERIES ? [...top, "other"] : top;
  return h("div", {}, heading,
    h("div", { class: "cards" },
      card("Spend", usd(spend.total.cost_usd), `${spend.period}, UTC`, "total-spend"),
      card("Calls", count(spend.total.calls), `${spend.workloads.length} workloads`),
      card("Tokens in / out", `${count(spend.total.input_tokens)} / ${count(spend.total.output_tokens)}`, "prompt / completion"),
      card("Models", count(spend.models.length), `${spend.providers.length} providers`),
    ),
    coverage(spend),
    panel("Spend per day, by workload",
      stackedArea(spend.days, series, { label: `Spend per day in ${spend.period}, stacked by workload` })),
    h("div", { class: "two" },
      panel("By workload", bars(spend.workloads.slice(0, 10), {
        label: "Spend by workload", name: (w) => w.workload })),
      panel("By model", bars(spend.models.slice(0, 10), {
        label: "Spend by model", name: (m) => `${m.provider} · ${m.model}` })),
    ),
    panel("Every workload, provider and model", dataTable({
      caption: `Spend in ${spend.period} by workload, provider and model`,
      filterLabel: "Filter by workload, provider or model",
      rows: spend.rows,
      columns: [
        { label: "Workload", value: (r) => r.workload },
        { label: "Provider", value: (r) => r.provider },
        { label: "Model", value: (r) => r.model },
        { label: "Calls", value: (r) => r.calls, show: (r) => count(r.calls), numeric: true },
        { label: "Tokens in", value: (r) => r.input_tokens, show: (r) => count(r.input_tokens), numeric: true },
        { label: "Tokens out", value: (r) => r.output_tokens, show: (r) => count(r.output_tokens), numeric: true },
        { label: "Cost", value: (r) => r.cost_usd, show: (r) => usd(r.cost_usd), numeric: true, sorted: true },
      ],
    })),
  );
}

function card(label, value, note, id) {
  return h("div", { class: "card" },
    h("p", { class: "card-label" }, label),
    h("p", { class: "card-value", id: id ?? null }, value),
    h("p", { class: "muted" }, note));
}

function picker(spend) {
  const months = spend.months.includes(spend.period) ? spend.months : [spend.period, ...spend.months];
  const select = h("select", { id: "period" },
    months.map((m) => h("option", { value: m, selected: m === spend.period }, m)));
  select.addEventListener("change", () => (location.hash = `#/?period=${select.value}`));
  return h("div", { class: "picker" }, h("label", { for: "period" }, "Month"), select);
}

// The report never leaves spend out silently: what the figures stand on.
function coverage(spend) {
  const c = spend.coverage;
  const parts = [`${count(c.catalogue_calls)} calls priced from the catalogue`];
  if (c.reported_calls) parts.push(`${count(c.reported_calls)} at the cost you reported`);
  const note = h("p", { id: "coverage" }, `${parts.join(", ")}.`);
  if (c.unpriced_calls) {
    note.append(` ${count(c.unpriced_calls)} calls are of models with no known price: counted, but at $0 until you add a price (Team → prices, or apex pricing import).`);
  }
  return h("div", { class: c.unpriced_calls ? "notice warn" : "notice" }, note);
}
