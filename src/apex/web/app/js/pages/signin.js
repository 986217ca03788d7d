import * as api from "../api.js";
import { failure, h, replace } from "../dom.js";

export async function signInPage(onSignedIn) {
  const problem = h("div", { "aria-live": "assertive" });
  const email = h("input", { id: "email", name: "email", type: "email", autocomplete: "username", required: true });
  const password = h("input", {
    id: "password", name: "password", type: "password", autocomplete: "current-password", required: true,
  });
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to Apex"),
    h("p", { class: "muted" }, "See where your LLM money goes, and what to change."),
    h("label", { for: "email" }, "Email"),
    email,
    h("label", { for: "password" }, "Password"),
    password,
    button,
    problem,
    h("p", { class: "muted" }, h("a", { href: "#/signup" }, "Create an account"), " · ",
      h("a", { href: "#/forgot" }, "Forgot your password?")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    replace(problem);
    try {
      await api.signIn(email.value.trim(), password.value);
      await onSignedIn();
    } catch (error) {
      // The same words whether or not the account exists.
      replace(problem, failure(error));
      button.disabled = false;
      password.focus();
    }
  });
  const providers = await api.get("/auth/providers").catch(() => []);
  const others = providers.length
    ? h(
        "div",
        { class: "providers" },
        h("p", { class: "muted" }, "Or continue with"),
        providers.map((p) =>
          h("a", { class: "button", href: `/api/v1/auth/oidc/${encodeURIComponent(p.name)}/login` }, p.display_name),
        ),
      )
    : null;
  setTimeout(() => email.focus(), 0);
  return h("div", { class: "center" }, form, others);
}
