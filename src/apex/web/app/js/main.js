// The shell: who is signed in, the navigation, and one page at a time by the URL's hash
// (`#/findings`), so that every page has an address and the back button works.
import * as api from "./api.js";
import { failure, h, loading, replace } from "./dom.js";
import { billingPage } from "./pages/billing.js";
import { chatPage } from "./pages/chat.js";
import { findingsPage } from "./pages/findings.js";
import { forgotPage, resetPage, signUpPage, verifyPage } from "./pages/account.js";
import { signInPage } from "./pages/signin.js";
import { spendPage } from "./pages/spend.js";
import { teamPage } from "./pages/team.js";

const PAGES = {
  "": { title: "Spend", render: spendPage },
  findings: { title: "Findings", render: findingsPage },
  chat: { title: "Chat", render: chatPage },
  billing: { title: "Plan & billing", render: billingPage },
  team: { title: "Team", render: teamPage },
};

// The pages of someone not signed in (any other address shows the sign-in page).
const SIGNED_OUT = {
  signup: ["Sign up", signUpPage],
  verify: ["Confirm your address", verifyPage],
  forgot: ["Reset your password", forgotPage],
  reset: ["Choose a new password", resetPage],
};

// What every page is given: the person, their role here and the organisation.
export const context = { me: null, role: null, organization: null, leave: null };

const MANAGERS = new Set(["owner", "admin"]);
const WRITERS = new Set(["owner", "admin", "member"]);
export const canManage = () => MANAGERS.has(context.role);
export const canWrite = () => WRITERS.has(context.role);

export async function loadContext() {
  const [me, organization] = await Promise.all([api.get("/users/me"), api.get("/organizations/current")]);
  const membership = me.memberships.find((m) => m.organization_id === organization.id);
  Object.assign(context, { me, organization, role: membership?.role ?? "viewer" });
  replace(document.getElementById("who"), `${me.email} (${context.role}) · `, switcher(me, organization));
  document.getElementById("bar").hidden = false;
}

// The organisation switcher: a new session for another of the person's organisations.
function switcher(me, organization) {
  if (me.memberships.length < 2) return organization.name;
  const select = h("select", { id: "organization", "aria-label": "Organisation" },
    me.memberships.map((m) => h("option", { value: m.organization_id, selected: m.organization_id === organization.id }, m.organization_name)));
  select.addEventListener("change", async () => {
    await api.switchTo(select.value);
    await loadContext();
    await route();
  });
  return select;
}

async function route() {
  const main = document.getElementById("main");
  if (context.leave) {
    context.leave();
    context.leave = null;
  }
  const name = location.hash.replace(/^#\/?/, "").split("?")[0];
  if (!api.session()) {
    document.getElementById("bar").hidden = true;
    const [title, page] = SIGNED_OUT[name] ?? ["Sign in", () => signInPage(started)];
    document.title = `${title} · Apex`;
    replace(main, await page());
    return;
  }
  const page = PAGES[name] ?? PAGES[""];
  document.title = `${page.title} · Apex`;
  for (const link of document.querySelectorAll("#nav a")) {
    const current = link.getAttribute("href") === `#/${name}`;
    link.toggleAttribute("aria-current", current);
    if (current) link.setAttribute("aria-current", "page");
  }
  replace(main, loading());
  main.dataset.page = ""; // set again once the page is drawn (tests and timings wait on it)
  try {
    replace(main, await page.render(context));
    main.dataset.page = name || "spend";
  } catch (error) {
    if (error.status === 401) return expired();
    replace(main, h("h1", {}, page.title), failure(error));
  }
}

async function started() {
  await loadContext();
  if (location.hash && location.hash !== "#/") location.hash = "#/";
  else await route();
}

async function expired() {
  await api.signOut().catch(() => {});
  await route();
}

async function boot() {
  document.getElementById("signout").addEventListener("click", async () => {
    await api.signOut().catch(() => {});
    location.hash = "#/";
    await route();
  });
  window.addEventListener("hashchange", route);
  try {
    if (await api.resume()) await loadContext();
  } catch (error) {
    replace(document.getElementById("main"), failure(error));
    return;
  }
  await route();
}

boot();
