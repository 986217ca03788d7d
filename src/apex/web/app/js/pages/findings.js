import * as api from "../api.js";
import { empty, h, toast, usd, when } from "../dom.js";
import { canManage } from "../main.js";

const STATUS = {
  open: "Open",
  verifying: "Saving to verify",
  verified: "Saving verified",
  not_realised: "Saving not realised",
  dismissed: "Dismissed",
};

export async function findingsPage() {
  const [findings, runs] = await Promise.all([api.get("/findings?limit=100"), api.get("/agents/runs")]);
  const latest = runs.find((r) => r.status === "succeeded");
  const report = latest ? await api.get(`/agents/runs/${latest.id}/report`).catch(() => null) : null;
  const withheld = report?.report?.withheld ?? null;
  const head = h("div", { class: "page-head" }, h("h1", {}, "Findings"),
    report ? h("p", { class: "muted" }, `From the run of ${when(latest.finished_at)} · ${usd(report.report.total_monthly_savings_usd)} a month to save in all`) : null);
  if (!findings.length && !withheld) {
    return h("div", {}, head, empty("No findings yet. Ask the agents for an analysis in Chat, or run apex demo.",
      h("a", { class: "button", href: "#/chat" }, "Open the chat")));
  }
  const list = h("ol", { class: "findings" }, findings.map((f) => h("li", {}, finding(f))));
  return h("div", {}, head, withheld ? teaser(withheld) : null, list);
}

function finding(f) {
  const status = h("span", { class: `status status-${f.status}` }, STATUS[f.status] ?? f.status);
  const body = h("article", { class: "finding", "aria-labelledby": `f-${f.id}` },
    h("header", {},
      h("h2", { id: `f-${f.id}` }, `${f.rank}. ${f.title}`),
      status),
    h("p", { class: "muted" }, `${f.workload} · ${f.provider} · ${f.model} · ${f.confidence} confidence`),
    h("dl", { class: "figures" },
      h("div", {}, h("dt", {}, "Now"), h("dd", {}, `${usd(f.current_monthly_usd)}/mo`)),
      h("div", {}, h("dt", {}, "After"), h("dd", {}, `${usd(f.projected_monthly_usd)}/mo`)),
      h("div", { class: "saving" }, h("dt", {}, "Saving"), h("dd", {}, `${usd(f.savings_monthly_usd)}/mo`)),
      f.status === "verifying" || f.status === "verified"
        ? h("div", {}, h("dt", {}, "Verified"), h("dd", {}, usd(f.verified_savings_usd)))
        : null,
    ),
    f.steps.length ? h("ol", { class: "steps" }, f.steps.map((step) => h("li", {}, step))) : null,
    h("details", {}, h("summary", {}, "Evidence"), evidence(f.evidence)),
    f.status_reason ? h("p", { class: "muted" }, f.status_reason) : null,
  );
  if (f.status === "open" && canManage()) body.append(actions(f, body));
  return body;
}

function evidence(data) {
  return h("dl", { class: "evidence" }, Object.entries(data).map(([key, value]) =>
    h("div", {}, h("dt", {}, key.replaceAll("_", " ")),
      h("dd", {}, typeof value === "object" ? JSON.stringify(value) : String(value)))));
}

function actions(f, article) {
  const reason = h("input", { id: `why-${f.id}`, maxlength: 500, placeholder: "Why not?" });
  const adopt = h("button", { type: "button", class: "primary" }, "Adopt");
  const dismiss = h("button", { type: "button" }, "Dismiss");
  const act = async (path, body, done) => {
    adopt.disabled = dismiss.disabled = true;
    try {
      const updated = await api.post(`/findings/${f.id}/${path}`, body);
      article.replaceWith(finding(updated));
      toast(done);
    } catch (error) {
      toast(error.message);
      adopt.disabled = dismiss.disabled = false;
    }
  };
  adopt.addEventListener("click", () => act("adopt", {}, "Adopted: its saving is verified over the next 7 days."));
  dismiss.addEventListener("click", () => {
    if (!reason.value.trim()) return reason.focus();
    act("dismiss", { reason: reason.value.trim() }, "Dismissed.");
  });
  return h("div", { class: "actions" }, adopt,
    h("label", { for: `why-${f.id}`, class: "sr-only" }, "Reason to dismiss"), reason, dismiss);
}

function teaser(withheld) {
  return h("div", { class: "notice upsell", id: "teaser" },
    h("p", {}, h("strong", {}, `${withheld.findings} more finding${withheld.findings === 1 ? "" : "s"} worth ${usd(withheld.monthly_savings_usd)} a month`),
      ` on the ${withheld.upgrade ? withheld.upgrade[0].toUpperCase() + withheld.upgrade.slice(1) : "next"} plan.`),
    withheld.upgrade ? h("a", { class: "button primary", href: `#/billing?upgrade=${withheld.upgrade}` }, "Upgrade to see them") : null,
  );
}
