// Building the page without innerHTML: every value from the API goes in as text, so
// nothing a customer sent (workload names, messages) can become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttributes(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttributes(el, attrs);
  append(el, children);
  return el;
}

function setAttributes(el, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// Money comes as exact decimal strings; shown rounded half up to the cent, computed on the
// string so that no float ever rounds a dollar amount.
export function usd(value) {
  const text = String(value ?? "0");
  const negative = text.startsWith("-");
  const [whole, fraction = ""] = text.replace("-", "").split(".");
  let cents = BigInt(whole || "0") * 100n + BigInt((fraction + "00").slice(0, 2));
  if ((fraction[2] ?? "0") >= "5") cents += 1n;
  const dollars = (cents / 100n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const rest = (cents % 100n).toString().padStart(2, "0");
  return `${negative && cents > 0n ? "-" : ""}$${dollars}.${rest}`;
}

export function count(value) {
  return Number(value ?? 0).toLocaleString("en-US");
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return date.toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

export function panel(title, ...children) {
  return h("section", { class: "panel", "aria-label": title }, h("h2", {}, title), children);
}

// The designed states: never a blank panel.
export function empty(message, action) {
  return h("div", { class: "empty" }, h("p", {}, message), action ?? null);
}

export function failure(error) {
  const ids = error.requestId ? ` (request ${error.requestId})` : "";
  return h("div", { class: "error", role: "alert" }, h("p", {}, `${error.message}${ids}`));
}

export function loading(label = "Loading…") {
  return h("p", { class: "loading", role: "status" }, label);
}

export function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.classList.add("shown");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("shown"), 4000);
}
