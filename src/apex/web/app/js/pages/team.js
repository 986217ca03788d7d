import * as api from "../api.js";
import { empty, h, panel, replace, toast, when } from "../dom.js";
import { canManage, context } from "../main.js";

const ROLES = ["viewer", "member", "admin", "owner"];

export async function teamPage() {
  const [members, invitations, keys, rules, prices] = await Promise.all([
    api.get("/organizations/current/members"), api.get("/organizations/current/invitations"),
    api.get("/organizations/current/api-keys"), api.get("/alerts/rules"), api.get("/pricing"),
  ]);
  const overrides = prices.filter((p) => p.overridden);
  return h("div", {},
    h("div", { class: "page-head" }, h("h1", {}, "Team")),
    panel("Members", h("table", {}, h("caption", {}, `Members of ${context.organization.name}`),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Email"), h("th", { scope: "col" }, "Role"))),
      h("tbody", {}, members.map(member)))),
    panel("Invitations", invitations.length
      ? h("ul", { class: "plain" }, invitations.map((i) => h("li", {}, `${i.email} as ${i.role}, until ${when(i.expires_at)}`)))
      : empty("No pending invitations."),
      canManage() ? inviteForm() : null),
    panel("API keys", keys.length
      ? h("ul", { class: "plain" }, keys.map((k) => h("li", {}, `${k.name} (apx_${k.prefix}…) · ${k.permissions.join(", ")} · last used ${when(k.last_used_at)}`)))
      : empty("No API keys."),
      canManage() ? keyForm() : null),
    panel("Alert rules", rules.length
      ? h("ul", { class: "plain" }, rules.map((r) => h("li", {}, `${r.name}: ${r.kind} above ${r.threshold} (${r.state})`)))
      : empty("No alert rules yet."),
      canManage() ? ruleForm() : null),
    panel("Negotiated prices", overrides.length
      ? h("ul", { class: "plain" }, overrides.map((p) => h("li", {},
          `${p.provider} · ${p.model}: $${p.input} in, $${p.output} out per million tokens (${p.source})`)))
      : empty(`The shipped catalogue prices all ${prices.length} models; set a negotiated price to use yours.`),
      canManage() ? priceForm() : null),
  );
}

function member(m) {
  const mine = m.user_id === context.me.id;
  if (!canManage() || mine) return h("tr", {}, h("td", {}, m.email), h("td", {}, m.role));
  const select = h("select", { "aria-label": `Role of ${m.email}` },
    ROLES.map((r) => h("option", { value: r, selected: r === m.role }, r)));
  select.addEventListener("change", async () => {
    try {
      await api.patch(`/organizations/current/members/${m.user_id}`, { role: select.value });
      toast(`${m.email} is now ${select.value}.`);
    } catch (error) {
      toast(error.message);
      select.value = m.role;
    }
  });
  return h("tr", {}, h("td", {}, m.email), h("td", {}, select));
}

function inviteForm() {
  const email = h("input", { id: "invite-email", type: "email", required: true });
  const role = h("select", { id: "invite-role" }, ["member", "viewer", "admin"].map((r) => h("option", { value: r }, r)));
  const form = h("form", { class: "inline" },
    h("label", { for: "invite-email" }, "Email"), email,
    h("label", { for: "invite-role" }, "Role"), role,
    h("button", { type: "submit" }, "Invite"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api.post("/organizations/current/invitations", { email: email.value, role: role.value });
      toast(`Invitation sent to ${email.value}.`);
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    } catch (error) {
      toast(error.message);
    }
  });
  return form;
}

// A daily spend rule mailed to one address (the API takes every kind and channel).
function ruleForm() {
  const name = h("input", { id: "rule-name", required: true, maxlength: 100, value: "Daily spend" });
  const threshold = h("input", { id: "rule-threshold", required: true, type: "number", min: "0.01", step: "0.01", value: "100" });
  const to = h("input", { id: "rule-to", required: true, type: "email", value: context.me.email });
  const form = h("form", { class: "inline" },
    h("label", { for: "rule-name" }, "Alert"), name,
    h("label", { for: "rule-threshold" }, "when a day's spend is above $"), threshold,
    h("label", { for: "rule-to" }, "mail"), to,
    h("button", { type: "submit" }, "Create rule"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api.post("/alerts/rules", { name: name.value, kind: "spend", threshold: threshold.value,
        window_minutes: 1440, channels: [{ type: "email", to: to.value }] });
      toast("Alert rule created.");
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    } catch (error) {
      toast(error.message);
    }
  });
  return form;
}

function priceForm() {
  const field = (id, label, attrs = {}) => [h("label", { for: id }, label), h("input", { id, required: true, ...attrs })];
  const [providerLabel, provider] = field("price-provider", "Provider", { value: "openai", maxlength: 50 });
  const [modelLabel, model] = field("price-model", "Model", { maxlength: 100 });
  const [inLabel, input] = field("price-in", "$ in / M tokens", { type: "number", min: "0", step: "any" });
  const [outLabel, output] = field("price-out", "$ out / M tokens", { type: "number", min: "0", step: "any" });
  const form = h("form", { class: "inline" }, providerLabel, provider, modelLabel, model, inLabel, input, outLabel, output,
    h("button", { type: "submit" }, "Set price"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api.request("PUT", `/pricing/${encodeURIComponent(provider.value)}/${encodeURIComponent(model.value)}`,
        { input: input.value, output: output.value });
      toast(`Price set for ${model.value}: the next analyses use it.`);
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    } catch (error) {
      toast(error.message);
    }
  });
  return form;
}

function keyForm() {
  const name = h("input", { id: "key-name", required: true, maxlength: 100 });
  const shown = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "inline" },
    h("label", { for: "key-name" }, "New key for usage ingestion, named"), name,
    h("button", { type: "submit" }, "Create key"), shown);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const key = await api.post("/organizations/current/api-keys", { name: name.value, permissions: ["usage:write"] });
      replace(shown, h("p", { class: "notice" }, "Copy it now: it is shown once. ", h("code", {}, key.key)));
    } catch (error) {
      toast(error.message);
    }
  });
  return form;
}
