import * as api from "../api.js";
import { empty, h, replace, toast, usd, when } from "../dom.js";
import { Live } from "../live.js";
import { markdown } from "../markdown.js";
import { canWrite, context } from "../main.js";

const STEP_TEXT = {
  agent_started: (p) => `${p.agent} started`,
  agent_thinking: (p) => p.text,
  tool_executing: (p) => `Running ${p.tool}…`,
  tool_completed: (p) => `${p.tool}: ${p.status ?? "done"}`,
  partial_result: (p) => `So far: ${usd(p.total_monthly_savings_usd)} a month to save`,
  agent_completed: (p) => `${p.agent} done (${p.duration_ms} ms)`,
  agent_fallback: (p) => `Fell back to ${p.to ?? "another provider"}`,
  agent_error: (p) => `Error${p.agent ? ` in ${p.agent}` : ""}: ${p.error}`,
};

export async function chatPage() {
  const threads = await api.get("/threads");
  const wanted = new URLSearchParams(location.hash.split("?")[1] ?? "").get("thread");
  const current = threads.find((t) => t.id === wanted) ?? threads[0] ?? null;
  const state = h("p", { class: "live-state", id: "live-state", role: "status" }, "Connecting…");
  const log = h("ol", { class: "log", id: "log", "aria-live": "polite", "aria-label": "Messages and run events" });
  const runs = new Map(); // run_id → its card in the log
  let activeRun = null;

  const input = h("textarea", { id: "message", rows: 2, maxlength: 4000, required: true,
    placeholder: "Ask about your LLM spend, e.g. where can we save this month?" });
  const sendButton = h("button", { type: "submit", class: "primary" }, "Send");
  const stopButton = h("button", { type: "button", id: "stop", hidden: true }, "Stop the run");
  const form = h("form", { class: "composer" },
    h("label", { for: "message" }, "Message"), input, h("div", { class: "row" }, sendButton, stopButton));

  const live = new Live({
    onState: (what, instance) => {
      replace(state, { connecting: "Connecting…", reconnecting: "Connection lost: reconnecting…",
        live: `Live (instance ${instance})`, "signed-out": "Signed out." }[what] ?? what);
      state.dataset.state = what;
    },
    onEvent: (frame) => shown(frame),
    onReply: (frame) => {
      if (frame.type === "error" || frame.type === "rate_limited") toast(frame.payload.detail ?? frame.payload.message ?? frame.type);
      if (frame.type === "thread_created") location.hash = `#/chat?thread=${frame.payload.thread.id}`;
      if (frame.type === "agent_stopping") toast("Stopping the run…");
    },
    onReload: async () => current && (await loadHistory()),
  });
  context.leave = () => live.close();

  function shown(frame) {
    const p = frame.payload ?? {};
    if (frame.type === "thread_created" && !current) location.hash = `#/chat?thread=${p.thread.id}`;
    if (frame.type === "thread_message") return log.append(message(p.message));
    const runId = frame.run_id ?? p.run_id;
    if (!runId) return;
    const card = runCard(runId);
    if (frame.type === "stream_chunk") {
      card.stream.append(p.text);
    } else if (frame.type === "final_report") {
      card.body.append(report(p));
      finished(runId, "succeeded");
    } else if (STEP_TEXT[frame.type]) {
      card.steps.append(h("li", { class: frame.type }, STEP_TEXT[frame.type](p)));
      if (frame.type === "agent_error" && p.fatal) finished(runId, "failed");
    }
  }

  function runCard(runId) {
    if (runs.has(runId)) return runs.get(runId);
    const steps = h("ol", { class: "steps" });
    const stream = h("p", { class: "stream" });
    const body = h("div", {}, steps, stream);
    const item = h("li", { class: "run", dataset: { run: runId } }, h("p", { class: "author" }, "Apex agents"), body);
    log.append(item);
    const card = { steps, stream, body, item };
    runs.set(runId, card);
    activeRun = runId;
    stopButton.hidden = !canWrite();
    return card;
  }

  function finished(runId, outcome) {
    runs.get(runId).item.dataset.outcome = outcome;
    if (activeRun === runId) {
      activeRun = null;
      stopButton.hidden = true;
    }
  }

  async function loadHistory() {
    const history = await api.get(`/threads/${current.id}/messages?limit=200`);
    replace(log, history.messages.length ? history.messages.map(message) : h("li", { class: "muted" }, "No messages yet."));
    runs.clear();
    live.follow(history.live.channel, history.live.seq, history.live.epoch);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = input.value.trim();
    if (!content || !current) return;
    live.send("user_message", { thread_id: current.id, content });
    input.value = "";
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stopButton.addEventListener("click", () => activeRun && live.send("stop_agent", { run_id: activeRun }));

  const newThread = h("button", { type: "button" }, "New thread");
  newThread.addEventListener("click", () => live.send("create_thread", { title: `Analysis ${new Date().toISOString().slice(0, 10)}` }));
  const side = h("nav", { class: "threads", "aria-label": "Threads" },
    h("h2", {}, "Threads"),
    canWrite() ? newThread : null,
    threads.length
      ? h("ul", {}, threads.map((t) => h("li", {},
          h("a", { href: `#/chat?thread=${t.id}`, "aria-current": t.id === current?.id ? "page" : null }, t.title))))
      : h("p", { class: "muted" }, "No threads yet."));

  live.connect();
  if (!current) {
    return h("div", { class: "chat" }, side, h("section", { class: "conversation" }, h("h1", {}, "Chat"), state,
      empty(canWrite() ? "Start a thread to ask the agents about your spend." : "No threads yet.")));
  }
  await loadHistory();
  return h("div", { class: "chat" }, side,
    h("section", { class: "conversation", "aria-labelledby": "thread-title" },
      h("h1", { id: "thread-title" }, current.title), state, log, canWrite() ? form : null));
}

function message(m) {
  return h("li", { class: `message ${m.role}`, dataset: { seq: String(m.seq) } },
    h("p", { class: "author" }, m.role === "user" ? "You" : "Apex", " · ", when(m.created_at)),
    m.role === "user" ? h("div", { class: "content" }, m.content) : markdown(m.content));
}

function report(r) {
  const rows = r.recommendations ?? [];
  return h("div", { class: "report" },
    h("h3", {}, `Report: ${usd(r.total_monthly_savings_usd)} a month to save`),
    r.summary ? h("p", {}, r.summary) : null,
    rows.length
      ? h("table", {},
          h("caption", {}, "Recommendations"),
          h("thead", {}, h("tr", {}, ["#", "Finding", "Now", "After", "Saving"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, rows.map((x) => h("tr", {},
            h("td", {}, x.rank), h("td", {}, x.title), h("td", { class: "num" }, usd(x.current_monthly_usd)),
            h("td", { class: "num" }, usd(x.projected_monthly_usd)), h("td", { class: "num" }, usd(x.savings_monthly_usd))))))
      : h("p", {}, "No waste found in this period."),
    r.withheld ? h("p", { class: "notice upsell" }, r.withheld.message, " ", h("a", { href: "#/billing" }, "Upgrade")) : null,
    h("p", {}, h("a", { href: "#/findings" }, "Act on the findings")),
  );
}
