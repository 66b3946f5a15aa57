// SPDX-License-Identifier: MIT
// roomcast.js: the browser (and Node) client for roomcast's WebSocket protocol.
// One dependency-free ES module; docs/protocol.md is the wire protocol it speaks.
//
//   import { RoomcastClient } from "/static/roomcast.js";
//   const client = new RoomcastClient({ url: "ws://localhost:8000/api/v1/ws", getToken });
//   client.on("notification", ({ level, message }) => toast(level, message));
//   client.join("project_42");
//   client.connect();
//
// The pure parts (backoff, the offline queue, frame routing, token times) are exported
// as small functions so that they can be tested without a socket.

/** Close codes the service uses (docs/protocol.md, section 7). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  HEARTBEAT_TIMEOUT: 4000,
  TOKEN_EXPIRED: 4001,
  POLICY: 4008,
  SLOW_CONSUMER: 4009,
});

export const LEVELS = Object.freeze(["info", "success", "warning", "error"]);

/** Room names the service accepts: 1 to 100 of A-Z a-z 0-9 _ . : @ - */
export const ROOM_NAME = /^[A-Za-z0-9_.:@-]{1,100}$/;

export const DEFAULTS = Object.freeze({
  baseDelay: 1000, // ms: the first reconnect waits up to this long
  maxDelay: 30000, // ms: the cap of the exponential growth (there is no give-up)
  queueLimit: 100, // frames kept while offline; the oldest is dropped past it
  refreshMargin: 30000, // ms before the token's exp at most to send refresh_token
  stopCodes: [CloseCode.POLICY], // close codes after which the client stops
  recover: true, // send positions on (re)join and reconnect, to get missed frames back
});

const OPEN = 1; // WebSocket.OPEN, without needing the constructor
const MAX_TIMER = 2 ** 31 - 1; // the longest setTimeout delay

// ---------------------------------------------------------------------------------
// Pure parts

/**
 * Exponential backoff with full jitter: a uniform delay in [0, min(maxDelay,
 * baseDelay * 2 ** attempt)). `attempt` counts the failures since the last good open
 * (0 for the first retry).
 */
export function backoffDelay(attempt, options = {}) {
  const { baseDelay = DEFAULTS.baseDelay, maxDelay = DEFAULTS.maxDelay } = options;
  const random = options.random ?? Math.random;
  const exponent = Math.min(Math.max(0, attempt), 52); // 2 ** 53 is plenty
  const ceiling = Math.min(maxDelay, baseDelay * 2 ** exponent);
  return Math.floor(random() * ceiling);
}

/** A bounded FIFO of frames waiting for the socket; the oldest goes first when full. */
export class OfflineQueue {
  constructor(limit = DEFAULTS.queueLimit) {
    if (!Number.isInteger(limit) || limit < 0) throw new RangeError("queueLimit: an integer >= 0");
    this.limit = limit;
    this.items = [];
  }

  get size() {
    return this.items.length;
  }

  /** Add a frame; returns the frames dropped to make room (oldest first). */
  push(frame) {
    if (this.limit === 0) return [frame];
    this.items.push(frame);
    const excess = this.items.length - this.limit;
    return excess > 0 ? this.items.splice(0, excess) : [];
  }

  /** Take every frame out, in the order they were pushed. */
  drain() {
    const items = this.items;
    this.items = [];
    return items;
  }

  clear() {
    this.items = [];
  }
}

/**
 * What a frame from the service means for the application: a list of
 * [eventName, detail] pairs to emit (the raw "frame" event aside). Frames follow
 * docs/protocol.md: {type, message, data, room}.
 */
export function routeFrame(frame) {
  if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") {
    return [["error", { kind: "protocol", code: "bad_frame", message: "not a roomcast frame", frame }]];
  }
  const data = frame.data !== null && typeof frame.data === "object" ? frame.data : {};
  const message = frame.message ?? "";
  const room = frame.room ?? null;
  if (data.notification === true) {
    const level = LEVELS.includes(data.level) ? data.level : "info";
    const target = { info: "user", room_message: "room", broadcast: "all" }[frame.type] ?? frame.type;
    const { notification, level: _level, ...extra } = data;
    const detail = { level, message, room, target, data: extra, frame };
    return [["notification", detail], [`notification:${level}`, detail]];
  }
  switch (frame.type) {
    case "room_message":
      return [["message", { room, message, from: data.from_user_id ?? null, payload: "payload" in data ? data.payload : message, frame }]];
    case "broadcast":
      return [["broadcast", { message, from: data.from_user_id ?? null, payload: "payload" in data ? data.payload : message, frame }]];
    case "error":
      return [["error", { kind: "frame", code: data.code ?? "unknown", message, frame }]];
    case "text":
      return [["text", { message, frame }]];
    case "info":
      if (room === null && "user_id" in data && Array.isArray(data.rooms)) {
        const personal = `user_${data.user_id}`;
        const welcome = { userId: data.user_id, rooms: data.rooms, position: positionOf(data), message, frame };
        return [["welcome", welcome], ...recoveryOf(personal, data)];
      }
      if (room !== null && Array.isArray(data.rooms)) {
        const joined = data.rooms.includes(room);
        return [["rooms", { rooms: data.rooms, room, joined, position: positionOf(data), message, frame }], ...recoveryOf(room, data)];
      }
      if (typeof data.expires_at === "number") {
        return [["refreshed", { expiresAt: data.expires_at, message, frame }]];
      }
      return [["info", { message, data, room, frame }]];
    default:
      return [["info", { message, data, room, frame }]];
  }
}

/** A room position ({offset, epoch}) in `source` (a frame, or a reply's data), or null. */
export function positionOf(source) {
  if (source === null || typeof source !== "object") return null;
  const { offset, epoch } = source;
  return Number.isInteger(offset) && offset >= 0 && typeof epoch === "string" && epoch !== "" ? { offset, epoch } : null;
}

/**
 * The position to keep in a room after seeing `seen` there, holding `held`: the
 * highest offset within an epoch (a frame that comes late, or twice, must not move the
 * position back, or a reconnect would replay frames already shown); a position in
 * another epoch replaces it (the room's numbering started over).
 */
export function laterPosition(held, seen) {
  if (!seen) return held ?? null;
  if (held && held.epoch === seen.epoch && held.offset >= seen.offset) return held;
  return seen;
}

function recoveryOf(room, data) {
  if (typeof data.recovered !== "boolean") return [];
  return [["recovery", { room, recovered: data.recovered, reason: data.reason ?? null, position: positionOf(data) }]];
}

/**
 * The `data` of a join_room that asks to recover `position` (the last frame seen in
 * the room), or only for positions when there is none yet (docs/protocol.md, 6b).
 */
export function joinData(position) {
  return position ? { offset: position.offset, epoch: position.epoch } : { recover: true };
}

/** The `exp` and `iat` claims of a JWT (seconds since 1970; null when absent), or null. */
export function tokenTimes(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    const number = (value) => (typeof value === "number" && Number.isFinite(value) ? value : null);
    return { exp: number(claims?.exp), iat: number(claims?.iat) };
  } catch {
    return null;
  }
}

/**
 * Milliseconds a token has left, seen `elapsed` ms after it was received at wall time
 * `now`; null when it never expires. With `iat`, the answer is its lifetime (exp - iat)
 * minus `elapsed`, so a browser whose clock is off still renews in time; without, it
 * is `exp` against the local clock.
 */
export function tokenTimeLeft(token, now, elapsed = 0) {
  const times = tokenTimes(token);
  if (times?.exp == null) return null;
  if (times.iat != null && times.iat <= times.exp) return (times.exp - times.iat) * 1000 - elapsed;
  return times.exp * 1000 - now;
}

/**
 * Milliseconds to wait before sending refresh_token for a token with `left` ms to
 * live: `margin` ms before it ends, but never more than a third of the time left, so
 * a short-lived token is renewed at two thirds of its life.
 */
export function refreshDelay(left, margin = DEFAULTS.refreshMargin) {
  if (left <= 0) return 0;
  return Math.max(0, Math.floor(left - Math.min(margin, left / 3)));
}

/**
 * `url` with the token in its `token` query parameter and, when `recover` is set, the
 * personal room's last position (`offset`, `epoch`), or `recover=1` when there is none.
 */
export function connectUrl(url, token, { recover = false, position = null } = {}) {
  const u = new URL(url);
  if (token !== undefined && token !== null && token !== "") u.searchParams.set("token", token);
  if (recover && position) {
    u.searchParams.set("offset", String(position.offset));
    u.searchParams.set("epoch", position.epoch);
  } else if (recover) {
    u.searchParams.set("recover", "1");
  }
  return u.toString();
}

// ---------------------------------------------------------------------------------
// A small event emitter (works the same in browsers and in Node)

export class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Call `listener(detail)` on each `type` event; returns a function that unsubscribes. */
  on(type, listener) {
    if (typeof listener !== "function") throw new TypeError("listener must be a function");
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    this._listeners.get(type)?.delete(listener);
  }

  once(type, listener) {
    const off = this.on(type, (detail) => {
      off();
      listener(detail);
    });
    return off;
  }

  emit(type, detail) {
    for (const listener of [...(this._listeners.get(type) ?? [])]) {
      try {
        listener(detail);
      } catch (error) {
        // A broken listener must not break the client or the other listeners.
        console.error(`roomcast: a "${type}" listener threw`, error);
      }
    }
  }
}

// ---------------------------------------------------------------------------------
// The client

/**
 * A WebSocket that stays connected: it fetches a token through `getToken` before every
 * (re)connect, reconnects with exponential backoff and full jitter (no give-up),
 * rejoins its rooms, renews the token before it expires, queues frames sent while
 * offline, and stops after a 4008 policy close or `close()`.
 */
export class RoomcastClient extends Emitter {
  constructor(options = {}) {
    super();
    if (!options.url) throw new TypeError("RoomcastClient: `url` is required");
    if (typeof options.getToken !== "function") {
      throw new TypeError("RoomcastClient: `getToken` must be an async function");
    }
    this.options = { ...DEFAULTS, ...options };
    this.url = options.url;
    this.getToken = options.getToken;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("RoomcastClient: no WebSocket here; pass the `WebSocket` option");
    }
    this._setTimeout = options.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = options.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
    this._now = options.now ?? Date.now;
    this._random = options.random ?? Math.random;

    this.state = "idle"; // idle | connecting | open | reconnecting | closed
    this.rooms = new Set(); // rooms wanted: rejoined after every reconnect
    this.roomTokens = new Map(); // room -> its room token, or the function that gets one
    this.serverRooms = []; // this connection's rooms as the service last listed them
    this.positions = new Map(); // room -> {offset, epoch}: the highest seen there (laterPosition)
    this.userId = null;
    this.queue = new OfflineQueue(this.options.queueLimit);
    this.attempt = 0; // failures since the last good open
    this.stats = { opens: 0, tokens: 0, refreshes: 0 };
    this._ws = null;
    this._timer = null; // reconnect wait
    this._refreshTimer = null;
    this._generation = 0; // bumps on every connect attempt, to ignore stale sockets
    this._stopped = false; // close() was called: for good
    this._needFresh = false;
    this._lastCode = null;
    this._why = "reconnect"; // the reason of the reconnect that is waiting
    // Back online (browsers): stop waiting out the backoff and try at once.
    this._onOnline = () => {
      if (this.state === "reconnecting") this.connect();
    };
    this._events = options.events ?? globalThis;
    this._events.addEventListener?.("online", this._onOnline);
  }

  // -- public API ------------------------------------------------------------------

  /** Start (or, after a 4008 stop, resume) connecting. */
  connect() {
    if (this._stopped) throw new Error("RoomcastClient: closed for good; make a new client");
    if (this.state === "connecting" || this.state === "open") return;
    this._cancelReconnect();
    // Cutting a reconnect wait short keeps its reason: "expired" after a 4001.
    const reason = { idle: "connect", reconnecting: this._why }[this.state] ?? "reconnect";
    this._open(reason);
  }

  /** Close for good: no reconnect, timers cleared, queued frames dropped. */
  close(code = CloseCode.NORMAL, reason = "client closed") {
    if (this._stopped) return;
    this._stopped = true;
    this._events.removeEventListener?.("online", this._onOnline);
    this.queue.clear();
    this._drop(code, reason, false);
    this._setState("closed", { code, reason });
  }

  /** Drop the current connection, if any, and connect again now (no backoff). */
  reconnect() {
    if (this._stopped) throw new Error("RoomcastClient: closed for good; make a new client");
    this._drop(CloseCode.NORMAL, "reconnecting", true);
    this._open("reconnect");
  }

  get connected() {
    return this.state === "open" && this._ws?.readyState === OPEN;
  }

  /**
   * Send a frame ({type, room, data}); returns true if it went out now, false if it
   * was queued for the next open (bounded: the oldest queued frame is dropped).
   */
  send(frame) {
    if (this._stopped) throw new Error("RoomcastClient: closed");
    if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") {
      throw new TypeError("send: a frame is an object with a string `type`");
    }
    if (this.connected) {
      this._ws.send(JSON.stringify(frame));
      return true;
    }
    for (const dropped of this.queue.push(frame)) {
      this.emit("dropped", { frame: dropped, queued: this.queue.size });
    }
    return false;
  }

  /**
   * Join a room now (when connected) and after every reconnect. `token`: a room token
   * for a closed room (see docs/protocol.md), either its text, sent again on every
   * rejoin, or an async function `({room, reason}) => text` asked again before every
   * rejoin (`reason`: "join", "rejoin", or "expired" when the service left the room at
   * the token's expiry: the client then joins again with the fresh token).
   */
  join(room, { token } = {}) {
    checkRoom(room);
    if (token !== undefined && typeof token !== "string" && typeof token !== "function") {
      throw new TypeError("join: `token` is a string or an async function");
    }
    this.rooms.add(room);
    if (token === undefined) this.roomTokens.delete(room);
    else this.roomTokens.set(room, token);
    if (this.connected) this._sendJoin(this._ws, room, "join");
  }

  /** Leave a room and stop rejoining it. */
  leave(room) {
    checkRoom(room);
    this.rooms.delete(room);
    this.roomTokens.delete(room);
    this.positions.delete(room);
    if (this.connected) this._ws.send(JSON.stringify({ type: "leave_room", room }));
  }

  /** A room_message; `data` is a string or any JSON value. */
  sendToRoom(room, data) {
    checkRoom(room);
    return this.send({ type: "room_message", room, data });
  }

  /** A broadcast to every client (the token needs the broadcast permission). */
  broadcast(data) {
    return this.send({ type: "broadcast", data });
  }

  /** The echo frame: an application-level ping. */
  text(data) {
    return this.send({ type: "text", data });
  }

  // -- connecting --------------------------------------------------------------------

  async _open(reason) {
    const generation = ++this._generation;
    const fresh = this._needFresh || reason === "expired";
    this._setState("connecting", { attempt: this.attempt, reason });
    let token;
    try {
      token = await this.getToken({ reason, fresh, attempt: this.attempt, lastCode: this._lastCode });
      this.stats.tokens += 1;
    } catch (error) {
      if (generation !== this._generation) return;
      this.emit("error", { kind: "token", code: "get_token_failed", message: String(error?.message ?? error), error });
      this._needFresh = true;
      this._scheduleReconnect(null);
      return;
    }
    if (generation !== this._generation) return; // closed or restarted meanwhile
    const receivedAt = this._now();
    let ws;
    try {
      const personal = this.positions.get(this._personalRoom());
      ws = new this.WebSocket(connectUrl(this.url, token, { recover: this.options.recover, position: personal }));
    } catch (error) {
      this.emit("error", { kind: "socket", code: "bad_url", message: String(error?.message ?? error), error });
      this._scheduleReconnect(null);
      return;
    }
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      opened = true;
      this._needFresh = false;
      this.stats.opens += 1;
      this._setState("open", { attempt: this.attempt });
      // Rooms first, then the queue: a queued room_message needs its room joined.
      // (A room whose token comes from a function is joined once the token arrives.)
      for (const room of this.rooms) this._sendJoin(ws, room, "rejoin");
      for (const frame of this.queue.drain()) ws.send(JSON.stringify(frame));
      this._scheduleRefresh(token, receivedAt);
    };
    ws.onmessage = (event) => {
      if (ws !== this._ws) return;
      this._onMessage(event.data);
    };
    ws.onerror = () => {
      if (ws !== this._ws) return;
      this.emit("error", { kind: "socket", code: "socket_error", message: "WebSocket error" });
    };
    ws.onclose = (event) => {
      if (ws !== this._ws) return;
      this._ws = null;
      this._cancelRefresh();
      this._onClose(event.code ?? CloseCode.ABNORMAL, event.reason ?? "", opened);
    };
  }

  _onMessage(raw) {
    let frame;
    try {
      frame = JSON.parse(typeof raw === "string" ? raw : String(raw));
    } catch {
      this.emit("error", { kind: "protocol", code: "bad_json", message: "a frame that is not JSON" });
      return;
    }
    this.emit("frame", frame);
    if (frame?.type === "error" && frame.data?.code === "room_token_expired") {
      this._onRoomTokenExpired(frame.room);
    }
    if (frame?.type === "error" && frame.data?.code === "forbidden") {
      this._onJoinRefused(frame);
    }
    // A frame through a room: remember where we are, to recover from there.
    this._setPosition(frame.room ?? this._personalRoom(), positionOf(frame));
    for (const [type, detail] of routeFrame(frame)) {
      if (type === "welcome") {
        this.userId = detail.userId;
        this.serverRooms = detail.rooms;
        // A good open: the service took us in, so the backoff starts over.
        this.attempt = 0;
      } else if (type === "rooms") {
        this.serverRooms = detail.rooms;
      } else if (type === "recovery") {
        const before = this.positions.get(detail.room);
        detail.missed = detail.recovered && before && detail.position ? detail.position.offset - before.offset : 0;
      }
      // A join answer or welcome: start from its position, unless it recovered (then
      // the missed frames follow and move the position on). Answers come in order
      // with the room's frames, so their position is never older than one we hold.
      // The service says where the room is: taken as it is, even below what we held
      // (a failed recovery starts over from there).
      if ((type === "welcome" || type === "rooms") && frame.data?.recovered !== true) {
        this._setPosition(detail.room ?? this._personalRoom(), detail.position, true);
      }
      this.emit(type, detail);
    }
  }

  /**
   * The one place positions are set: only for rooms still tracked, so that an answer
   * arriving after a leave() does not bring the room's position back. A frame's
   * position only moves it on (laterPosition); an answer's replaces it.
   */
  _setPosition(room, position, answer = false) {
    if (!position || !this._tracks(room)) return;
    this.positions.set(room, answer ? position : laterPosition(this.positions.get(room), position));
  }

  /** Whether the client keeps `room`'s position: a room it wants, or its personal room. */
  _tracks(room) {
    return room !== null && (this.rooms.has(room) || room === this._personalRoom());
  }

  /** `user_{id}` once the welcome told us who we are, else null. */
  _personalRoom() {
    return this.userId === null ? null : `user_${this.userId}`;
  }

  _joinFrame(room, token) {
    const frame = { type: "join_room", room };
    if (this.options.recover) frame.data = joinData(this.positions.get(room));
    if (token !== undefined) frame.token = token;
    return frame;
  }

  /** Send `room`'s join on `ws`, with its room token (asked for first, if a function). */
  _sendJoin(ws, room, reason) {
    const token = this.roomTokens.get(room);
    if (typeof token !== "function") {
      ws.send(JSON.stringify(this._joinFrame(room, token)));
      return;
    }
    Promise.resolve()
      .then(() => token({ room, reason }))
      .then(
        (text) => {
          // Still this socket, still wanted with this token source: then join.
          if (ws !== this._ws || this.roomTokens.get(room) !== token || !this.connected) return;
          ws.send(JSON.stringify(this._joinFrame(room, text)));
        },
        (error) => {
          this.emit("error", { kind: "token", code: "get_room_token_failed", room,
            message: String(error?.message ?? error), error });
        },
      );
  }

  /** The service left `room` at its room token's expiry: join again with a fresh one
   *  if a function gives them, else stop wanting it (the text would be refused). */
  _onRoomTokenExpired(room) {
    if (!this.rooms.has(room)) return;
    if (typeof this.roomTokens.get(room) === "function") {
      if (this.connected) this._sendJoin(this._ws, room, "expired");
    } else {
      this.rooms.delete(room);
      this.roomTokens.delete(room);
    }
  }

  /** The service refused to let us into a room (`forbidden`, naming it): stop wanting
   *  it, so that it is not sent again after every reconnect, and say so ("refused"). */
  _onJoinRefused(frame) {
    const room = frame.room;
    if (typeof room !== "string" || !this.rooms.has(room)) return;
    this.rooms.delete(room);
    this.roomTokens.delete(room);
    this.positions.delete(room);
    this.emit("refused", { room, code: frame.data.code, message: frame.message ?? "", frame });
  }

  _onClose(code, reason, opened) {
    this._lastCode = code;
    const willReconnect = !this._stopped && !this.options.stopCodes.includes(code);
    this.emit("close", { code, reason, opened, willReconnect });
    if (this._stopped) return;
    if (!willReconnect) {
      // 4008: the service says this client misbehaves. Retrying blindly would repeat
      // it; the application decides (client.connect() resumes).
      this._setState("closed", { code, reason });
      this.emit("stopped", { code, reason });
      return;
    }
    if (code === CloseCode.TOKEN_EXPIRED || !opened) this._needFresh = true;
    if (code === CloseCode.TOKEN_EXPIRED && opened && this.attempt === 0) {
      // The token ran out on a good connection: reconnect at once with a new one.
      this.attempt += 1;
      this._reconnectAfter(0, code, reason, "expired");
      return;
    }
    this._scheduleReconnect(code, reason);
  }

  _scheduleReconnect(code, reason = "") {
    const delay = backoffDelay(this.attempt, { ...this.options, random: this._random });
    this.attempt += 1;
    this._reconnectAfter(delay, code, reason, code === CloseCode.TOKEN_EXPIRED ? "expired" : "reconnect");
  }

  _reconnectAfter(delay, code, reason, why) {
    this._cancelReconnect();
    this._why = why;
    this._setState("reconnecting", { code, reason, delay, attempt: this.attempt });
    this._timer = this._setTimeout(() => {
      this._timer = null;
      if (!this._stopped) this._open(why);
    }, delay);
  }

  _cancelReconnect() {
    if (this._timer !== null) this._clearTimeout(this._timer);
    this._timer = null;
  }

  // -- token renewal -------------------------------------------------------------------

  _scheduleRefresh(token, receivedAt) {
    this._cancelRefresh();
    const left = tokenTimeLeft(token, this._now(), this._now() - receivedAt);
    if (left === null) return; // a token without exp needs no renewal
    const delay = refreshDelay(left, this.options.refreshMargin);
    // Timers overflow past 2 ** 31 - 1 ms (24.8 days): wait in steps for longer tokens.
    const step = Math.min(delay, MAX_TIMER);
    this._refreshTimer = this._setTimeout(() => {
      this._refreshTimer = null;
      if (step < delay) this._scheduleRefresh(token, receivedAt);
      else this._refresh();
    }, step);
  }

  _cancelRefresh() {
    if (this._refreshTimer !== null) this._clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
  }

  async _refresh() {
    const ws = this._ws;
    if (!ws || ws.readyState !== OPEN) return;
    let token;
    try {
      token = await this.getToken({ reason: "refresh", fresh: true, attempt: 0, lastCode: null });
      this.stats.tokens += 1;
    } catch (error) {
      // The connection carries on until its token expires; then 4001 and a reconnect.
      this.emit("error", { kind: "token", code: "get_token_failed", message: String(error?.message ?? error), error });
      return;
    }
    if (ws !== this._ws || ws.readyState !== OPEN) return;
    this.stats.refreshes += 1;
    ws.send(JSON.stringify({ type: "refresh_token", data: token }));
    // The next renewal follows from the new token's own lifetime. If the service
    // refuses it (an error event), the old expiry stands: 4001, then a reconnect.
    this._scheduleRefresh(token, this._now());
  }

  // -- helpers -------------------------------------------------------------------------

  _setState(state, detail = {}) {
    this.state = state;
    this.emit("state", { state, ...detail });
  }

  /**
   * Stop the timers and close the socket, if any, without waiting for its onclose: a
   * "close" event reports it at once, and whether it had opened.
   */
  _drop(code, reason, willReconnect) {
    this._generation += 1; // a getToken still running is for a connection no longer wanted
    this._cancelReconnect();
    this._cancelRefresh();
    const ws = this._ws;
    this._ws = null;
    if (!ws) return;
    const opened = this.state === "open"; // only the current socket's onopen sets "open"
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closing, or an invalid code for this socket: nothing left to do
    }
    this.emit("close", { code, reason, opened, willReconnect });
  }
}

function checkRoom(room) {
  if (typeof room !== "string" || !ROOM_NAME.test(room)) {
    throw new RangeError(`invalid room name ${JSON.stringify(room)}: use 1 to 100 of A-Z a-z 0-9 _ . : @ -`);
  }
}

export default RoomcastClient;
