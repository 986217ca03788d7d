// The pages of someone not signed in yet: sign up, confirm the address from the mailed
// link, ask for a password reset and set the new password from its link. The tokens come
// in the link's fragment (`#/verify?token=...`), which no server ever receives.
import * as api from "../api.js";
import { failure, h, replace } from "../dom.js";

const param = (name) => new URLSearchParams(location.hash.split("?")[1] ?? "").get(name);

function form(title, intro, fields, submitLabel, onSubmit) {
  const problem = h("div", { "aria-live": "assertive" });
  const button = h("button", { type: "submit", class: "primary" }, submitLabel);
  const inputs = {};
  const body = h("form", { class: "signin", "aria-labelledby": "form-title" },
    h("h1", { id: "form-title" }, title),
    intro ? h("p", { class: "muted" }, intro) : null,
    fields.map(([name, label, attrs]) => {
      inputs[name] = h("input", { id: name, name, required: true, ...attrs });
      return [h("label", { for: name }, label), inputs[name]];
    }),
    button, problem,
    h("p", { class: "muted" }, h("a", { href: "#/" }, "Back to sign in")));
  body.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    replace(problem);
    try {
      replace(body, await onSubmit(Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value]))));
    } catch (error) {
      const fields = (error.body.errors ?? []).map((e) => `${e.field}: ${e.message}`);
      replace(problem, failure(error), fields.length ? h("ul", {}, fields.map((f) => h("li", {}, f))) : null);
      button.disabled = false;
    }
  });
  return h("div", { class: "center" }, body);
}

const done = (title, text, link = h("a", { class: "button primary", href: "#/" }, "Sign in")) =>
  [h("h1", { id: "form-title" }, title), h("p", {}, text), link];

export function signUpPage() {
  return form("Create your Apex account", "Free to start: your organisation's spend, findings and chat.",
    [["email", "Email", { type: "email", autocomplete: "email" }],
     ["password", "Password (12 characters or more)", { type: "password", autocomplete: "new-password", minlength: 12 }],
     ["organization_name", "Organisation", { autocomplete: "organization", maxlength: 200 }]],
    "Create account",
    async (values) => {
      await api.post("/auth/signup", values);
      return done("Check your mail", `We sent a link to ${values.email}. Open it to create the account.`, null);
    });
}

export function verifyPage() {
  const token = param("token");
  const status = h("div", { class: "signin" }, h("p", { role: "status" }, "Confirming your address…"));
  api.post("/auth/verify", { token })
    .then(() => replace(status, done("Your account is ready", "Sign in with your email and password.")))
    .catch((error) => replace(status, h("h1", {}, "This link did not work"), failure(error),
      h("a", { href: "#/signup" }, "Sign up again")));
  return h("div", { class: "center" }, status);
}

export function forgotPage() {
  return form("Reset your password", "We mail a link to set a new one, if an account uses this address.",
    [["email", "Email", { type: "email", autocomplete: "email" }]], "Send the link",
    async (values) => {
      await api.post("/auth/password-reset", values);
      return done("Check your mail", "If an account uses this address, a link to set a new password is on its way.", null);
    });
}

export function resetPage() {
  return form("Choose a new password", "It signs you out on every device.",
    [["password", "New password (12 characters or more)", { type: "password", autocomplete: "new-password", minlength: 12 }]],
    "Set the password",
    async (values) => {
      await api.post("/auth/password-reset/confirm", { token: param("token"), password: values.password });
      return done("Password changed", "Sign in with the new password.");
    });
}
