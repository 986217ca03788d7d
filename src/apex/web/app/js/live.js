// The page's WebSocket: authenticated with a short-lived token of the browser session,
// following channels by their `seq`, and reconnecting by itself. After a drop (the server
// stopped, the network blinked) it connects again, to whichever instance the load balancer
// picks, and sends `resume` with the last `seq` of every channel: the missed events come
// first, in order, then live ones, without a gap or a repeat (docs/realtime.md).
import * as api from "./api.js";

const RETRY_MS = [250, 500, 1000, 2000, 5000];
const TOKEN_MARGIN_MS = 30_000;

export class Live {
  constructor({ onEvent, onReply, onState, onReload }) {
    Object.assign(this, { onEvent, onReply, onState, onReload });
    this.positions = new Map(); // channel → { seq, epoch }
    this.socket = null;
    this.closed = false;
    this.attempt = 0;
    this.nextId = 0;
    this.outbox = [];
  }

  follow(channel, seq, epoch) {
    this.positions.set(channel, { seq, epoch });
    if (this.ready) this.send("resume", { channels: { [channel]: { seq, epoch } } });
  }

  async connect() {
    if (this.closed) return;
    this.ready = false;
    this.onState("connecting");
    let token;
    try {
      token = await this.token();
    } catch (error) {
      if (error.status === 401 || error.status === 403) return this.onState("signed-out");
      return this.retry();
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws`);
    this.socket = socket;
    socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "auth", token: token.access_token })));
    socket.addEventListener("message", (message) => this.received(JSON.parse(message.data)));
    socket.addEventListener("close", (event) => {
      if (event.code === 1008) this.minted = null; // refused (revoked, expired): a new one, or sign in
      if (this.socket !== socket) return;
      this.ready = false;
      clearTimeout(this.renewal);
      this.retry();
    });
    // A new token before this one expires: the server closes a socket whose token has.
    clearTimeout(this.renewal);
    this.renewal = setTimeout(() => {
      this.minted = null;
      socket.close(4000, "token renewal");
    }, token.expiresAt - TOKEN_MARGIN_MS - Date.now());
  }

  // The session's token, minted again only when it is near its end: reconnecting after a
  // drop reuses it, so a flapping network does not fill the session's quota of live tokens.
  async token() {
    if (!this.minted || this.minted.expiresAt - TOKEN_MARGIN_MS <= Date.now()) {
      const answer = await api.post("/auth/session/token");
      this.minted = { access_token: answer.access_token, expiresAt: Date.now() + answer.expires_in * 1000 };
    }
    return this.minted;
  }

  retry() {
    if (this.closed) return;
    this.onState("reconnecting");
    const wait = RETRY_MS[Math.min(this.attempt, RETRY_MS.length - 1)];
    this.attempt += 1;
    setTimeout(() => this.connect(), wait);
  }

  received(frame) {
    if (frame.type === "connection_established") {
      this.attempt = 0;
      this.ready = true;
      this.instance = frame.payload.instance;
      this.onState("live", frame.payload.instance);
      if (this.positions.size) this.send("resume", { channels: Object.fromEntries(this.positions) });
      for (const queued of this.outbox.splice(0)) this.socket.send(queued);
      return;
    }
    if (frame.type === "resumed") {
      const { channel, recovered, epoch } = frame.payload;
      if (!recovered) {
        this.positions.delete(channel);
        this.onReload(channel, epoch);
      }
      return;
    }
    if (frame.channel && frame.seq !== null && frame.seq !== undefined) {
      const known = this.positions.get(frame.channel);
      if (known && frame.seq <= known.seq && frame.epoch === known.epoch) return; // had it
      this.positions.set(frame.channel, { seq: frame.seq, epoch: frame.epoch });
      this.onEvent(frame);
      return;
    }
    this.onReply(frame);
  }

  send(type, payload = {}) {
    this.nextId += 1;
    const id = `c${this.nextId}`;
    const text = JSON.stringify({ type, id, payload });
    if (this.ready && this.socket?.readyState === WebSocket.OPEN) this.socket.send(text);
    else this.outbox.push(text);
    return id;
  }

  close() {
    this.closed = true;
    clearTimeout(this.renewal);
    this.socket?.close(1000, "left the page");
  }
}
