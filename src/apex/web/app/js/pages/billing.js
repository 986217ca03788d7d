import * as api from "../api.js";
import { count, empty, h, panel, toast, usd, when } from "../dom.js";
import { canManage, context, loadContext } from "../main.js";

const ORDER = ["free", "early", "mid", "enterprise"];
const title = (tier) => tier[0].toUpperCase() + tier.slice(1);

export async function billingPage() {
  // Subscriptions and invoices are for owners and admins: others see the plan and usage.
  const forManagers = (promise) => promise.catch((e) => (e.status === 403 ? null : Promise.reject(e)));
  const [plans, found, meter, invoices] = await Promise.all([
    api.get("/billing/plans"), forManagers(api.get("/billing/subscription")), api.get("/usage/meter"),
    forManagers(api.get("/billing/invoices")),
  ]);
  const subscription = found ?? { tier: context.organization.tier, status: "managed", period_end: null };
  const returned = new URLSearchParams(location.search).get("checkout");
  if (returned) history.replaceState(null, "", `/${location.hash}`); // said once
  // Wait for the plan to move: the subscription is read from the database, the
  // organisation's tier (the meter's quota) through the cache, and the gateway's webhooks
  // move them one after the other, so a page drawn in between shows one plan's name over
  // the other's quota.
  if (returned === "done") awaitNewPlan(meter.tier, subscription.tier);
  if (returned === "canceled") toast("Checkout canceled: nothing was charged.");
  const tier = subscription.tier;
  const wanted = new URLSearchParams(location.hash.split("?")[1] ?? "").get("upgrade");
  return h("div", {},
    h("div", { class: "page-head" }, h("h1", {}, "Plan & billing")),
    h("div", { class: "cards" },
      card("Plan", title(tier), status(subscription), "plan"),
      card("Records this month", count(meter.records),
        meter.records_included ? `of ${count(meter.records_included)} included (${percent(meter.records, meter.records_included)})` : "no limit", "records"),
      card("Metered cost", usd(meter.cost_usd), `${meter.period}, as billed`),
    ),
    meter.records_included ? quota(meter) : null,
    subscription.scheduled_tier ? h("p", { class: "notice" }, `Changes to ${title(subscription.scheduled_tier)} at the end of this period.`) : null,
    panel("Plans", h("div", { class: "plans" }, plans
      .sort((a, b) => ORDER.indexOf(a.tier) - ORDER.indexOf(b.tier))
      .map((plan) => planCard(plan, subscription, wanted)))),
    invoices === null ? null : panel("Invoices", invoices.length ? invoiceTable(invoices) : empty("No invoices yet.")),
  );
}

function card(label, value, note, id) {
  return h("div", { class: "card" }, h("p", { class: "card-label" }, label),
    h("p", { class: "card-value", id: id ?? null }, value), h("p", { class: "muted" }, note));
}

function status(subscription) {
  if (subscription.status === "none") return tierNote(subscription.tier);
  if (subscription.status === "managed") return "billing is managed by owners and admins";
  const renews = subscription.period_end ? ` · ${subscription.cancel_at_period_end ? "ends" : "renews"} ${when(subscription.period_end)}` : "";
  return `${subscription.status.replace("_", " ")}${renews}`;
}

function tierNote(tier) {
  return tier === "free" ? "free, no card needed" : "set by your operator, no subscription";
}

function percent(used, of) {
  return `${Math.floor((100 * used) / of)}%`;
}

function quota(meter) {
  const share = Math.min(100, Math.floor((100 * meter.records) / meter.records_included));
  return h("div", { class: "quota" },
    h("label", { for: "quota" }, "Monthly records used"),
    h("progress", { id: "quota", max: 100, value: share }, `${share}%`));
}

const SUBSCRIBED = new Set(["active", "trialing", "past_due"]);

function planCard(plan, subscription, wanted) {
  const tier = subscription.tier;
  const current = plan.tier === tier;
  const higher = ORDER.indexOf(plan.tier) > ORDER.indexOf(tier);
  const subscribed = SUBSCRIBED.has(subscription.status);
  const features = [
    plan.records_per_month ? `${count(plan.records_per_month)} records a month` : "Unlimited records",
    plan.api_requests_per_hour ? `${count(plan.api_requests_per_hour)} API requests an hour` : "Unlimited API requests",
    `${count(plan.websocket_messages_per_minute)} chat messages a minute`,
    `${plan.concurrent_agent_runs} concurrent agent run${plan.concurrent_agent_runs === 1 ? "" : "s"}`,
    plan.seats ? `${count(plan.seats)} seat${plan.seats === 1 ? "" : "s"}` : "Unlimited seats",
    `${plan.retention_days} days of history`,
    Number(plan.savings_share) ? `${Math.round(Number(plan.savings_share) * 100)}% of verified savings` : null,
  ].filter(Boolean);
  let action = null;
  if (current) {
    action = h("p", { class: "your-plan" }, "Your plan");
  } else if (plan.tier !== "free" && higher && canManage()) {
    action = h("button", { type: "button", class: plan.tier === wanted ? "primary pulse" : "primary",
      dataset: { tier: plan.tier } }, `Upgrade to ${title(plan.tier)}`);
    // With a card on file the change applies at once, prorated; otherwise through checkout.
    const withCard = subscribed && subscription.card_on_file;
    action.addEventListener("click", () => (withCard ? change(plan.tier, action) : checkout(plan.tier, action)));
  } else if (plan.tier !== "free" && !higher && subscribed && context.role === "owner") {
    action = h("button", { type: "button", dataset: { tier: plan.tier } }, `Switch to ${title(plan.tier)} at period end`);
    action.addEventListener("click", () => change(plan.tier, action));
  }
  return h("article", { class: current ? "plan current" : "plan", "aria-label": `${title(plan.tier)} plan` },
    h("h3", {}, title(plan.tier)),
    h("p", { class: "price" }, `${usd(plan.monthly_fee_usd)}`, h("span", { class: "muted" }, " / month")),
    h("ul", {}, features.map((f) => h("li", {}, f))), action);
}

async function change(tier, button) {
  button.disabled = true;
  try {
    const changed = await api.post("/billing/subscription/change", { tier });
    const s = changed.subscription;
    toast(s.scheduled_tier ? `${title(s.scheduled_tier)} from the end of this period.` : `You are on ${title(s.tier)} now.`);
    await loadContext();
    window.dispatchEvent(new HashChangeEvent("hashchange"));
  } catch (error) {
    toast(error.message);
    button.disabled = false;
  }
}

// Back from the gateway's page: the plan changes when its webhooks arrive (seconds). The
// page is drawn again once what it shows has moved and the organisation's tier (what every
// limit and the meter read) and the subscription's agree, so the redrawn page agrees with
// itself whichever of the two moved first.
function awaitNewPlan(drawnTier, drawnSubscriptionTier) {
  toast("Card saved: your new plan starts as soon as the payment is confirmed.");
  let tries = 0;
  const poll = setInterval(async () => {
    tries += 1;
    const [now, sub] = await Promise.all([
      api.get("/organizations/current").catch(() => null),
      api.get("/billing/subscription").catch(() => null),
    ]);
    const moved = now && (now.tier !== drawnTier || (sub && sub.tier !== drawnSubscriptionTier));
    const agree = now && (!sub || sub.tier === now.tier);
    if ((moved && agree) || tries >= 30) {
      clearInterval(poll);
      if (moved && agree && location.hash.startsWith("#/billing")) {
        await loadContext();
        window.dispatchEvent(new HashChangeEvent("hashchange"));
      }
    }
  }, 1000);
}

async function checkout(tier, button) {
  button.disabled = true;
  try {
    const session = await api.post("/billing/checkout", { tier });
    location.assign(session.url); // the payment gateway's hosted page, then back here
  } catch (error) {
    toast(error.message);
    button.disabled = false;
  }
}

function invoiceTable(invoices) {
  return h("table", {}, h("caption", {}, `Invoices of ${context.organization.name}`),
    h("thead", {}, h("tr", {}, ["Number", "Issued", "Period", "Status", "Total", ""].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, invoices.map((i) => h("tr", {},
      h("td", {}, `#${i.number}`), h("td", {}, when(i.issued_at)),
      h("td", {}, `${i.period_start.slice(0, 10)} – ${i.period_end.slice(0, 10)}`),
      h("td", {}, i.status), h("td", { class: "num" }, usd(i.total_usd)),
      h("td", {}, h("a", { href: `/api/v1/billing/invoices/${i.id}/html`, target: "_blank", rel: "noopener" }, "View"))))));
}
