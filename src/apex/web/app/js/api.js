// The only way the page talks to Apex: its public REST API, with the browser session's
// cookie (HttpOnly, sent by the browser) and its CSRF token on every change.

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail ?? `The server answered ${status}.`);
    this.status = status;
    this.body = body ?? {};
    this.requestId = body?.request_id ?? null;
  }
}

const state = { csrf: null, session: null };

export async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, { detail: "Apex cannot be reached. Check your connection and try again." });
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body ?? {});
export const patch = (path, body) => request("PATCH", path, body);
export const del = (path) => request("DELETE", path);

export async function signIn(email, password) {
  const session = await request("POST", "/auth/session", { email, password });
  remember(session);
  return session;
}

// After a reload (or an OpenID Connect login), the cookie is there but the page has no
// CSRF token yet: the session answers it to this origin only.
export async function resume() {
  try {
    remember(await get("/auth/session"));
    return state.session;
  } catch (error) {
    if (error.status === 401) return null;
    throw error;
  }
}

export async function switchTo(organizationId) {
  remember(await request("POST", "/auth/session/switch", { organization_id: organizationId }));
}

export async function signOut() {
  try {
    await request("POST", "/auth/logout");
  } finally {
    state.csrf = null;
    state.session = null;
  }
}

function remember(session) {
  state.session = session;
  state.csrf = session.csrf_token;
}

export function session() {
  return state.session;
}
