// RoomcastClient against a fake WebSocket and a fake clock: reconnects, tokens, rooms,
// the offline queue, events. Run with: node --test tests/js/
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { RoomcastClient } from "../../roomcast/web/roomcast.js";

class FakeClock {
  constructor() {
    this.time = 1_700_000_000_000;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { fn, at: this.time + Math.max(0, ms), ms });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
    this.now = () => this.time;
  }

  /** The delays (ms) of the timers now pending, in creation order. */
  pending() {
    return [...this.timers.values()].map((t) => t.ms);
  }

  /** Move time forward, firing due timers in order; lets promises settle in between. */
  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      await settle();
      const due = [...this.timers.entries()]
        .filter(([, t]) => t.at <= end)
        .sort((a, b) => a[1].at - b[1].at || a[0] - b[0]);
      if (due.length === 0) break;
      const [id, timer] = due[0];
      this.timers.delete(id);
      this.time = Math.max(this.time, timer.at);
      timer.fn();
    }
    this.time = end;
    await settle();
  }
}

/** Let pending promise callbacks (getToken, the client's awaits) run. */
async function settle() {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A WebSocket stand-in: records what the client sends; the test opens, feeds and closes it. */
function fakeWebSocketClass() {
  class FakeWebSocket {
    static instances = [];

    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      FakeWebSocket.instances.push(this);
    }

    static get last() {
      return FakeWebSocket.instances.at(-1);
    }

    get token() {
      return new URL(this.url).searchParams.get("token");
    }

    /** The frames the client sent, parsed. */
    get frames() {
      return this.sent.map((text) => JSON.parse(text));
    }

    send(text) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(text);
    }

    close(code = 1000, reason = "") {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }

    // Driven by the tests, as the network and the service would.
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }

    welcome(userId = 7, rooms = [`user_${userId}`]) {
      this.receive({ type: "info", message: "Connected successfully", data: { user_id: userId, rooms }, room: null });
    }

    receive(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }

    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }

    fail() {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({ code: 1006, reason: "", wasClean: false });
    }
  }
  return FakeWebSocket;
}

/** A JWT-shaped token (unsigned: the client only reads exp) for `sub` expiring at `exp`. */
function fakeJwt(claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.signature`;
}

const URL_ = "ws://127.0.0.1:8000/api/v1/ws";

/** A client wired to fakes; getToken hands out t1, t2, ... and records its calls. */
function setup(options = {}) {
  const clock = new FakeClock();
  const WS = fakeWebSocketClass();
  const tokenCalls = [];
  const getToken =
    options.getToken ??
    (async (request) => {
      tokenCalls.push(request);
      return `t${tokenCalls.length}`;
    });
  const client = new RoomcastClient({
    url: URL_,
    getToken,
    WebSocket: WS,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => 0.5,
    ...options,
  });
  const events = [];
  for (const name of ["state", "welcome", "rooms", "refreshed", "notification", "notification:warning",
    "message", "broadcast", "text", "info", "error", "close", "stopped", "dropped"]) {
    client.on(name, (detail) => events.push([name, detail]));
  }
  const named = (name) => events.filter(([n]) => n === name).map(([, d]) => d);
  return { client, clock, WS, tokenCalls, events, named };
}

/** Connect and bring the socket to a welcomed open. */
async function connected(ctx) {
  ctx.client.connect();
  await settle();
  ctx.WS.last.open();
  ctx.WS.last.welcome();
  return ctx.WS.last;
}

describe("connecting", () => {
  test("getToken is awaited, and its token goes in the URL", async () => {
    const ctx = setup();
    ctx.client.connect();
    assert.equal(ctx.client.state, "connecting");
    await settle();
    assert.deepEqual(ctx.tokenCalls, [{ reason: "connect", fresh: false, attempt: 0, lastCode: null }]);
    assert.equal(ctx.WS.instances.length, 1);
    assert.equal(ctx.WS.last.url, `${URL_}?token=t1&recover=1`);
    ctx.WS.last.open();
    ctx.WS.last.welcome(7);
    assert.equal(ctx.client.state, "open");
    assert.equal(ctx.client.userId, 7);
    assert.deepEqual(ctx.named("state").map((s) => s.state), ["connecting", "open"]);
  });

  test("needs a url, a getToken function and a WebSocket", () => {
    assert.throws(() => new RoomcastClient({ getToken: async () => "t" }), TypeError);
    assert.throws(() => new RoomcastClient({ url: URL_ }), TypeError);
    assert.throws(() => new RoomcastClient({ url: URL_, getToken: async () => "t", WebSocket: 3 }), TypeError);
  });

  test("a getToken that fails is reported and retried with backoff", async () => {
    let calls = 0;
    const ctx = setup({
      getToken: async () => {
        calls += 1;
        if (calls === 1) throw new Error("auth server down");
        return "good";
      },
    });
    ctx.client.connect();
    await settle();
    assert.equal(ctx.WS.instances.length, 0);
    const [error] = ctx.named("error");
    assert.deepEqual([error.kind, error.message], ["token", "auth server down"]);
    assert.equal(ctx.client.state, "reconnecting");
    await ctx.clock.advance(1000);
    assert.equal(calls, 2);
    assert.equal(ctx.WS.last.token, "good");
  });
});

describe("reconnecting", () => {
  test("backoff grows while attempts fail, and starts over after a good open", async () => {
    const ctx = setup({ baseDelay: 100, maxDelay: 1000 });
    const ws = await connected(ctx);
    ws.serverClose(1001, "shutting down");
    const delays = [];
    for (let i = 0; i < 6; i++) {
      const [wait] = ctx.clock.pending();
      delays.push(wait);
      await ctx.clock.advance(wait);
      ctx.WS.last.fail(); // the service is still down
    }
    // random() = 0.5: half of 100, 200, 400, 800, then the 1000 cap.
    assert.deepEqual(delays, [50, 100, 200, 400, 500, 500]);
    const reconnecting = ctx.named("state").filter((s) => s.state === "reconnecting");
    assert.equal(reconnecting[0].code, 1001);
    assert.equal(reconnecting[1].code, 1006);

    await ctx.clock.advance(ctx.clock.pending()[0]);
    ctx.WS.last.open();
    ctx.WS.last.welcome();
    ctx.WS.last.serverClose(1011);
    assert.deepEqual(ctx.clock.pending(), [50], "back to the first delay");
  });

  test("no fixed give-up: it keeps trying at the cap", async () => {
    const ctx = setup({ baseDelay: 10, maxDelay: 100 });
    (await connected(ctx)).serverClose(1006);
    for (let i = 0; i < 200; i++) {
      await ctx.clock.advance(ctx.clock.pending()[0]);
      ctx.WS.last.fail();
    }
    assert.equal(ctx.WS.instances.length, 201);
    assert.equal(ctx.client.state, "reconnecting");
    assert.deepEqual(ctx.clock.pending(), [50]);
  });

  test("getToken is called on every reconnect; fresh after a failure before open", async () => {
    const ctx = setup();
    (await connected(ctx)).serverClose(1001);
    await ctx.clock.advance(500);
    assert.equal(ctx.WS.last.token, "t2");
    assert.deepEqual(ctx.tokenCalls[1], { reason: "reconnect", fresh: false, attempt: 1, lastCode: 1001 });
    ctx.WS.last.fail();
    await ctx.clock.advance(ctx.clock.pending()[0]);
    assert.equal(ctx.tokenCalls[2].fresh, true, "a handshake refused looks like 1006 before open");
    assert.equal(ctx.WS.last.token, "t3");
  });

  test("4001: a new token is fetched, then it reconnects at once", async () => {
    const ctx = setup();
    const ws = await connected(ctx);
    ws.serverClose(4001, "token expired");
    assert.deepEqual(ctx.clock.pending(), [0]);
    await ctx.clock.advance(0);
    assert.deepEqual(ctx.tokenCalls.at(-1), { reason: "expired", fresh: true, attempt: 1, lastCode: 4001 });
    assert.equal(ctx.WS.instances.length, 2);
    assert.equal(ctx.WS.last.token, "t2");
    ctx.WS.last.open();
    assert.equal(ctx.client.state, "open");
  });

  test("4001 again and again backs off instead of spinning", async () => {
    const ctx = setup({ baseDelay: 100 });
    (await connected(ctx)).serverClose(4001);
    await ctx.clock.advance(0);
    ctx.WS.last.open(); // opened, but refused again before any welcome
    ctx.WS.last.serverClose(4001);
    assert.deepEqual(ctx.clock.pending(), [100]);
    await ctx.clock.advance(100);
    assert.equal(ctx.tokenCalls.at(-1).reason, "expired");
  });

  test("4008: no retry; a stopped event and the closed state; connect() resumes", async () => {
    const ctx = setup();
    const ws = await connected(ctx);
    ws.serverClose(4008, "policy");
    assert.deepEqual(ctx.clock.pending(), []);
    await ctx.clock.advance(3_600_000);
    assert.equal(ctx.WS.instances.length, 1);
    assert.equal(ctx.client.state, "closed");
    assert.deepEqual(ctx.named("stopped"), [{ code: 4008, reason: "policy" }]);
    assert.deepEqual(ctx.named("close").at(-1), { code: 4008, reason: "policy", opened: true, willReconnect: false });
    assert.deepEqual(ctx.named("state").at(-1), { state: "closed", code: 4008, reason: "policy" });
    ctx.client.connect();
    await settle();
    assert.equal(ctx.WS.instances.length, 2, "the application decided to try again");
  });

  test("close() stops for good", async () => {
    const ctx = setup();
    const ws = await connected(ctx);
    ctx.client.close();
    assert.deepEqual(ws.closedWith, { code: 1000, reason: "client closed" });
    assert.equal(ctx.client.state, "closed");
    await ctx.clock.advance(3_600_000);
    assert.equal(ctx.WS.instances.length, 1);
    assert.throws(() => ctx.client.connect());
    assert.throws(() => ctx.client.text("x"));
  });

  test("close() while waiting to reconnect, or while getToken runs", async () => {
    const ctx = setup();
    (await connected(ctx)).serverClose(1001);
    ctx.client.close();
    assert.deepEqual(ctx.clock.pending(), []);

    let release;
    const slow = setup({ getToken: () => new Promise((resolve) => { release = resolve; }) });
    slow.client.connect();
    await settle();
    slow.client.close();
    release("late");
    await settle();
    assert.equal(slow.WS.instances.length, 0, "no socket after close()");
  });

  test("reconnect() drops the socket and connects at once", async () => {
    const ctx = setup();
    const first = await connected(ctx);
    ctx.client.reconnect();
    assert.deepEqual(first.closedWith, { code: 1000, reason: "reconnecting" });
    await settle();
    assert.equal(ctx.WS.instances.length, 2);
    assert.equal(ctx.tokenCalls.at(-1).reason, "reconnect");
    first.serverClose(1000); // the old socket's late close changes nothing
    assert.equal(ctx.client.state, "connecting");
  });

  test("the close event of a socket dropped by reconnect() or close() says whether it had opened", async () => {
    const ctx = setup();
    await connected(ctx);
    ctx.client.reconnect();
    await settle(); // the new socket exists but has not opened yet
    ctx.client.reconnect();
    await settle();
    ctx.WS.last.open();
    ctx.client.close();
    assert.deepEqual(ctx.named("close"), [
      { code: 1000, reason: "reconnecting", opened: true, willReconnect: true },
      { code: 1000, reason: "reconnecting", opened: false, willReconnect: true },
      { code: 1000, reason: "client closed", opened: true, willReconnect: false },
    ]);
  });

  test("going back online cuts the backoff short", async () => {
    const events = new EventTarget();
    const ctx = setup({ events, baseDelay: 60_000, maxDelay: 60_000 });
    (await connected(ctx)).serverClose(1006);
    assert.deepEqual(ctx.clock.pending(), [30_000]);
    events.dispatchEvent(new Event("online"));
    await settle();
    assert.equal(ctx.WS.instances.length, 2, "tried at once");
    assert.deepEqual(ctx.clock.pending(), []);
    ctx.client.close();
    events.dispatchEvent(new Event("online"));
    await settle();
    assert.equal(ctx.WS.instances.length, 2, "closed: the listener is gone");
  });

  test("going back online after a 4001 still asks getToken for an expired token's successor", async () => {
    const events = new EventTarget();
    const ctx = setup({ events, baseDelay: 60_000, maxDelay: 60_000 });
    (await connected(ctx)).serverClose(4001);
    await ctx.clock.advance(0);
    ctx.WS.last.open(); // refused again before any welcome: now a backoff
    ctx.WS.last.serverClose(4001);
    assert.deepEqual(ctx.clock.pending(), [30_000]);
    events.dispatchEvent(new Event("online"));
    await settle();
    assert.deepEqual(ctx.tokenCalls.at(-1), { reason: "expired", fresh: true, attempt: 2, lastCode: 4001 });
    ctx.client.close();
  });

  test("events of a replaced socket are ignored", async () => {
    const ctx = setup();
    const first = await connected(ctx);
    first.serverClose(1001);
    await ctx.clock.advance(500);
    const second = ctx.WS.last;
    second.open();
    first.receive({ type: "text", message: "stale", data: null, room: null });
    first.serverClose(1006);
    assert.equal(ctx.named("text").length, 0);
    assert.equal(ctx.client.state, "open");
  });
});

describe("rooms", () => {
  test("joined rooms are rejoined after a reconnect; left ones are not", async () => {
    const ctx = setup();
    const ws = await connected(ctx);
    ctx.client.join("project_42");
    ctx.client.join("chat");
    ctx.client.join("gone");
    ctx.client.leave("gone");
    assert.deepEqual(ws.frames.map((f) => [f.type, f.room]), [
      ["join_room", "project_42"], ["join_room", "chat"], ["join_room", "gone"], ["leave_room", "gone"],
    ]);
    ws.serverClose(1001);
    ctx.client.join("while_offline");
    await ctx.clock.advance(500);
    ctx.WS.last.open();
    assert.deepEqual(ctx.WS.last.frames, [
      { type: "join_room", room: "project_42", data: { recover: true } },
      { type: "join_room", room: "chat", data: { recover: true } },
      { type: "join_room", room: "while_offline", data: { recover: true } },
    ]);
    assert.deepEqual([...ctx.client.rooms], ["project_42", "chat", "while_offline"]);
  });

  test("the service's room list is kept from the replies", async () => {
    const ctx = setup();
    const ws = await connected(ctx);
    ctx.client.join("p");
    ws.receive({ type: "info", message: "Joined room: p", data: { rooms: ["user_7", "p"] }, room: "p" });
    assert.deepEqual(ctx.client.serverRooms, ["user_7", "p"]);
    assert.equal(ctx.named("rooms")[0].joined, true);
  });

  test("a room token is sent with the join and again with every rejoin", async () => {
    const ctx = setup({ recover: false });
    const ws = await connected(ctx);
    ctx.client.join("project_7", { token: "rt-7" });
    ctx.client.join("open_room");
    assert.deepEqual(ws.frames, [
      { type: "join_room", room: "project_7", token: "rt-7" },
      { type: "join_room", room: "open_room" },
    ]);
    ws.serverClose(1001);
    await ctx.clock.advance(500);
    ctx.WS.last.open();
    assert.deepEqual(ctx.WS.last.frames, [
      { type: "join_room", room: "project_7", token: "rt-7" },
      { type: "join_room", room: "open_room" },
    ]);
    assert.throws(() => ctx.client.join("p", { token: 7 }), TypeError);
  });

  test("a room token function is asked before every join, and again at its expiry", async () => {
    const ctx = setup({ recover: false });
    const asked = [];
    const getRoomToken = async ({ room, reason }) => {
      asked.push([room, reason]);
      return `rt-${asked.length}`;
    };
    const ws = await connected(ctx);
    ctx.client.join("project_7", { token: getRoomToken });
    await settle();
    ws.receive({ type: "error", message: "Room token expired: left room project_7",
      data: { code: "room_token_expired", rooms: ["user_7"] }, room: "project_7" });
    await settle();
    ws.serverClose(1001);
    await ctx.clock.advance(500);
    ctx.WS.last.open();
    await settle();
    assert.deepEqual(asked, [["project_7", "join"], ["project_7", "expired"], ["project_7", "rejoin"]]);
    assert.deepEqual(ws.frames, [
      { type: "join_room", room: "project_7", token: "rt-1" },
      { type: "join_room", room: "project_7", token: "rt-2" },
    ]);
    assert.deepEqual(ctx.WS.last.frames, [{ type: "join_room", room: "project_7", token: "rt-3" }]);
  });

  test("a room left at its token's expiry is not rejoined with the same dead token", async () => {
    const ctx = setup({ recover: false });
    const ws = await connected(ctx);
    ctx.client.join("project_7", { token: "rt-7" });
    ws.receive({ type: "error", message: "Room token expired: left room project_7",
      data: { code: "room_token_expired", rooms: ["user_7"] }, room: "project_7" });
    assert.deepEqual([...ctx.client.rooms], []);
    assert.equal(ctx.named("error").at(-1).code, "room_token_expired");
  });

  test("a refused join (forbidden, naming the room) is dropped: not re-sent on reconnect", async () => {
    const ctx = setup({ recover: false });
    const refused = [];
    ctx.client.on("refused", (detail) => refused.push(detail));
    const ws = await connected(ctx);
    ctx.client.join("project_7", { token: "rt-bad" });
    ctx.client.join("open_room");
    ws.receive({ type: "error", message: "Not allowed: room project_7 is closed",
      data: { code: "forbidden" }, room: "project_7" });
    // A forbidden error naming no wanted room (a broadcast refused) changes nothing.
    ws.receive({ type: "error", message: "Not allowed: broadcasting", data: { code: "forbidden" }, room: null });
    assert.deepEqual([...ctx.client.rooms], ["open_room"]);
    assert.deepEqual(refused.map(({ room, code }) => [room, code]), [["project_7", "forbidden"]]);
    assert.equal(ctx.named("error").at(-1).code, "forbidden"); // still an error event too
    ws.serverClose(1001);
    await ctx.clock.advance(500);
    ctx.WS.last.open();
    assert.deepEqual(ctx.WS.last.frames, [{ type: "join_room", room: "open_room" }]);
  });

  test("room names are checked before anything is sent", () => {
    const ctx = setup();
    assert.throws(() => ctx.client.join("project 42"), RangeError);
    assert.throws(() => ctx.client.join(""), RangeError);
    assert.throws(() => ctx.client.sendToRoom("x".repeat(101), "hi"), RangeError);
  });
});

describe("the offline queue", () => {
  test("frames sent while offline are queued and flushed on open, after the rejoins", async () => {
    const ctx = setup();
    ctx.client.join("p");
    assert.equal(ctx.client.sendToRoom("p", "first"), false);
    assert.equal(ctx.client.text("second"), false);
    ctx.client.connect();
    await settle();
    assert.equal(ctx.client.send({ type: "text", data: "third" }), false, "still connecting");
    ctx.WS.last.open();
    assert.deepEqual(ctx.WS.last.frames, [
      { type: "join_room", room: "p", data: { recover: true } },
      { type: "room_message", room: "p", data: "first" },
      { type: "text", data: "second" },
      { type: "text", data: "third" },
    ]);
    assert.equal(ctx.client.queue.size, 0);
    assert.equal(ctx.client.text("live"), true);
    assert.deepEqual(ctx.WS.last.frames.at(-1), { type: "text", data: "live" });
  });

  test("bounded: the oldest frame is dropped, with an event", async () => {
    const ctx = setup({ queueLimit: 2 });
    for (const n of [1, 2, 3, 4]) ctx.client.text(n);
    assert.deepEqual(ctx.named("dropped").map((d) => d.frame.data), [1, 2]);
    await connected(ctx);
    assert.deepEqual(ctx.WS.instances[0].frames.map((f) => f.data), [3, 4]);
  });

  test("frames queued during a reconnect wait go out on the next open", async () => {
    const ctx = setup();
    (await connected(ctx)).serverClose(1006);
    ctx.client.broadcast("while away");
    await ctx.clock.advance(500);
    ctx.WS.last.open();
    assert.deepEqual(ctx.WS.last.frames, [{ type: "broadcast", data: "while away" }]);
  });
});

describe("events", () => {
  test("each frame kind reaches its event", async () => {
    const ctx = setup();
    const ws = await connected(ctx);
    ws.receive({ type: "room_message", message: "hi", data: { from_user_id: 8 }, room: "p" });
    ws.receive({ type: "broadcast", message: "all", data: { from_user_id: 9 }, room: null });
    ws.receive({ type: "broadcast", message: "Maintenance", data: { level: "warning", notification: true }, room: null });
    ws.receive({ type: "error", message: "Rate limited", data: { code: "rate_limited" }, room: null });
    ws.receive({ type: "text", message: "Echo: x", data: null, room: null });
    ws.receive("not json");
    assert.deepEqual(ctx.named("message").map((m) => [m.room, m.from, m.message]), [["p", 8, "hi"]]);
    assert.deepEqual(ctx.named("broadcast").map((b) => b.from), [9]);
    assert.deepEqual(ctx.named("notification").map((n) => [n.level, n.target]), [["warning", "all"]]);
    assert.equal(ctx.named("notification:warning").length, 1);
    assert.deepEqual(ctx.named("error").map((e) => [e.kind, e.code]), [["frame", "rate_limited"], ["protocol", "bad_json"]]);
    assert.deepEqual(ctx.named("text").map((t) => t.message), ["Echo: x"]);
  });

  test("on() returns an unsubscribe; once(); a throwing listener does not break others", async () => {
    const ctx = setup();
    const ws = await connected(ctx);
    const got = [];
    const off = ctx.client.on("text", (t) => got.push(`on:${t.message}`));
    ctx.client.once("text", (t) => got.push(`once:${t.message}`));
    const original = console.error;
    console.error = () => {};
    try {
      ctx.client.on("text", () => { throw new Error("boom"); });
      ws.receive({ type: "text", message: "a", data: null, room: null });
      off();
      ws.receive({ type: "text", message: "b", data: null, room: null });
    } finally {
      console.error = original;
    }
    assert.deepEqual(got, ["on:a", "once:a"]);
    assert.equal(ctx.named("text").length, 2);
  });
});

describe("token renewal", () => {
  const expiring = (clock, seconds, sub = "7") => fakeJwt({ sub, exp: clock.time / 1000 + seconds });

  test("a refresh_token frame goes out before exp, with a token from getToken", async () => {
    let n = 0;
    let clock;
    const calls = [];
    const ctx = setup({
      getToken: async (request) => {
        calls.push(request.reason);
        n += 1;
        return expiring(clock, 600, `7-${n}`);
      },
    });
    clock = ctx.clock;
    const ws = await connected(ctx);
    await ctx.clock.advance(569_999); // a 10-minute token, renewed 30 s before exp
    assert.equal(ws.frames.length, 0);
    await ctx.clock.advance(1);
    assert.deepEqual(calls, ["connect", "refresh"]);
    const [frame] = ws.frames;
    assert.equal(frame.type, "refresh_token");
    assert.equal(frame.data.split(".").length, 3);
    ws.receive({ type: "info", message: "Token refreshed", data: { expires_at: ctx.clock.time / 1000 + 600 }, room: null });
    assert.equal(ctx.named("refreshed").length, 1);
    await ctx.clock.advance(570_000);
    assert.deepEqual(calls, ["connect", "refresh", "refresh"], "and again before the new exp");
    assert.equal(ctx.WS.instances.length, 1, "the same connection all along");
    assert.equal(ctx.client.stats.refreshes, 2);
  });

  test("a short token is renewed at two thirds of its life", async () => {
    let clock;
    const ctx = setup({ getToken: async () => expiring(clock, 3) });
    clock = ctx.clock;
    const ws = await connected(ctx);
    await ctx.clock.advance(2000);
    assert.equal(ws.frames[0]?.type, "refresh_token");
  });

  test("no exp, no renewal; nothing is sent on a closed socket", async () => {
    const ctx = setup();
    await connected(ctx);
    await ctx.clock.advance(10 * 3_600_000);
    assert.equal(ctx.tokenCalls.length, 1);

    let clock;
    const other = setup({ getToken: async () => expiring(clock, 60) });
    clock = other.clock;
    await connected(other);
    assert.deepEqual(other.clock.pending(), [40_000], "renewal planned at two thirds of 60 s");
    other.WS.last.serverClose(1001);
    assert.deepEqual(other.clock.pending(), [500], "only the reconnect: the renewal went with the socket");
  });

  test("a wrong local clock does not matter when the token has iat", async () => {
    let clock;
    const ctx = setup({
      getToken: async () => {
        const serverNow = clock.time / 1000 + 5 * 3600; // the service is five hours ahead
        return fakeJwt({ sub: "7", iat: serverNow, exp: serverNow + 90 });
      },
    });
    clock = ctx.clock;
    const ws = await connected(ctx);
    await ctx.clock.advance(59_999);
    assert.equal(ws.frames.length, 0);
    await ctx.clock.advance(1);
    assert.equal(ws.frames[0]?.type, "refresh_token", "30 s before the end of its 90 s");
  });

  test("a token far in the future does not overflow the timer", async () => {
    let clock;
    const ctx = setup({ getToken: async () => expiring(clock, 365 * 24 * 3600) });
    clock = ctx.clock;
    const ws = await connected(ctx);
    assert.ok(Math.max(...ctx.clock.pending()) <= 2 ** 31 - 1);
    await ctx.clock.advance(3_600_000);
    assert.equal(ws.frames.length, 0, "not renewed early");
  });
});

describe("recovery of missed frames", () => {
  const joined = (room, extra = {}) => ({
    type: "info", message: `Joined room: ${room}`, data: { rooms: ["user_7", room], ...extra }, room,
  });
  const inRoom = (room, offset, epoch, message = `m${offset}`) => ({
    type: "room_message", message, data: { from_user_id: 8 }, room, offset, epoch,
  });

  test("positions are remembered and sent back on rejoin and reconnect", async () => {
    const ctx = setup();
    const recoveries = [];
    ctx.client.on("recovery", (r) => recoveries.push(r));
    const ws = await connected(ctx);
    ws.welcome(7); // the welcome of a connection with recover=1 carries the personal position
    ws.receive({ type: "info", message: "Connected", data: { user_id: 7, rooms: ["user_7"], offset: 0, epoch: "u1" }, room: null });
    ctx.client.join("p");
    ws.receive(joined("p", { offset: 10, epoch: "e1" }));
    ws.receive(inRoom("p", 11, "e1"));
    ws.receive(inRoom("p", 12, "e1"));
    ws.receive({ type: "info", message: "hi", data: { level: "info", notification: true }, room: null, offset: 1, epoch: "u1" });
    assert.deepEqual(ctx.client.positions.get("p"), { offset: 12, epoch: "e1" });
    assert.deepEqual(ctx.client.positions.get("user_7"), { offset: 1, epoch: "u1" });

    ws.serverClose(1006);
    await ctx.clock.advance(500);
    const again = ctx.WS.last;
    assert.equal(again.url, `${URL_}?token=t2&offset=1&epoch=u1`, "the personal room's position");
    again.open();
    assert.deepEqual(again.frames, [{ type: "join_room", room: "p", data: { offset: 12, epoch: "e1" } }]);
    again.receive({ type: "info", message: "Connected", data: { user_id: 7, rooms: ["user_7"], offset: 1, epoch: "u1", recovered: true }, room: null });
    again.receive(joined("p", { offset: 14, epoch: "e1", recovered: true }));
    again.receive(inRoom("p", 13, "e1", "missed one"));
    again.receive(inRoom("p", 14, "e1", "missed two"));
    assert.deepEqual(recoveries.map((r) => [r.room, r.recovered, r.missed]), [["user_7", true, 0], ["p", true, 2]]);
    assert.deepEqual(ctx.named("message").slice(-2).map((m) => m.message), ["missed one", "missed two"]);
    assert.deepEqual(ctx.client.positions.get("p"), { offset: 14, epoch: "e1" });
  });

  test("the position is the highest seen, not the last: a late frame is not replayed", async () => {
    const ctx = setup();
    const ws = await connected(ctx);
    ws.receive({ type: "info", message: "Connected", data: { user_id: 7, rooms: ["user_7"], offset: 0, epoch: "u1" }, room: null });
    ctx.client.join("p");
    ws.receive(joined("p", { offset: 10, epoch: "e1" }));
    ws.receive(inRoom("p", 12, "e1"));
    ws.receive(inRoom("p", 11, "e1")); // comes late (through another node, say)
    ws.receive(inRoom("p", 12, "e1")); // or twice
    assert.deepEqual(ctx.client.positions.get("p"), { offset: 12, epoch: "e1" });
    const notice = (offset) => ({ type: "info", message: "n", data: { level: "info", notification: true }, room: null, offset, epoch: "u1" });
    ws.receive(notice(5));
    ws.receive(notice(4));
    assert.deepEqual(ctx.client.positions.get("user_7"), { offset: 5, epoch: "u1" });

    ws.serverClose(1006);
    await ctx.clock.advance(500);
    const again = ctx.WS.last;
    assert.equal(again.url, `${URL_}?token=t2&offset=5&epoch=u1`, "recovers after the highest");
    again.open();
    assert.deepEqual(again.frames, [{ type: "join_room", room: "p", data: { offset: 12, epoch: "e1" } }]);
    again.receive(joined("p", { offset: 12, epoch: "e1", recovered: true }));
    again.receive(inRoom("p", 0, "e2")); // the room's numbering started over: a new epoch
    again.receive(inRoom("p", 2, "e2"));
    again.receive(inRoom("p", 1, "e2"));
    assert.deepEqual(ctx.client.positions.get("p"), { offset: 2, epoch: "e2" });
  });

  test("a failed recovery is reported, and the position starts over from the answer", async () => {
    const ctx = setup();
    const recoveries = [];
    ctx.client.on("recovery", (r) => recoveries.push(r));
    const ws = await connected(ctx);
    ctx.client.join("p");
    ws.receive(joined("p", { offset: 3, epoch: "old" }));
    ws.serverClose(1001); // a restart: histories are lost
    await ctx.clock.advance(500);
    ctx.WS.last.open();
    ctx.WS.last.receive(joined("p", { offset: 0, epoch: "new", recovered: false, reason: "epoch_changed" }));
    assert.deepEqual(recoveries, [{ room: "p", recovered: false, reason: "epoch_changed", position: { offset: 0, epoch: "new" }, missed: 0 }]);
    assert.deepEqual(ctx.client.positions.get("p"), { offset: 0, epoch: "new" });
    // In the same epoch too: a client ahead of the room (whose stream was lost, say)
    // starts over from the answer, below what it held.
    ctx.WS.last.receive(inRoom("p", 4, "new"));
    ctx.WS.last.serverClose(1001);
    await ctx.clock.advance(1000);
    assert.equal(ctx.WS.instances.length, 3);
    ctx.WS.last.open();
    assert.deepEqual(ctx.WS.last.frames, [{ type: "join_room", room: "p", data: { offset: 4, epoch: "new" } }]);
    ctx.WS.last.receive(joined("p", { offset: 1, epoch: "new", recovered: false, reason: "epoch_changed" }));
    assert.deepEqual(ctx.client.positions.get("p"), { offset: 1, epoch: "new" });
  });

  test("leaving forgets the position; recover: false sends the seed's frames", async () => {
    const ctx = setup();
    const ws = await connected(ctx);
    ctx.client.join("p");
    ws.receive(joined("p", { offset: 3, epoch: "e" }));
    ctx.client.leave("p");
    assert.equal(ctx.client.positions.has("p"), false);
    ws.receive(inRoom("p", 4, "e")); // in flight before the leave took effect
    assert.equal(ctx.client.positions.has("p"), false);

    const plain = setup({ recover: false });
    plain.client.join("q");
    const socket = await connected(plain);
    assert.equal(socket.url, `${URL_}?token=t1`);
    assert.deepEqual(socket.frames, [{ type: "join_room", room: "q" }]);
  });

  test("an answer that arrives after the leave does not bring the position back", async () => {
    const ctx = setup();
    const ws = await connected(ctx);
    ctx.client.join("p");
    ctx.client.leave("p"); // before the service answered the join
    ws.receive(joined("p", { offset: 3, epoch: "e" }));
    assert.equal(ctx.client.positions.has("p"), false, "an answer that only gave positions");
    ctx.client.join("p");
    assert.deepEqual(ws.frames.at(-1), { type: "join_room", room: "p", data: { recover: true } }, "joined again from scratch");
  });

  test("a failed recovery answered after the leave does not bring the position back", async () => {
    const ctx = setup();
    const ws = await connected(ctx);
    ctx.client.join("p");
    ws.receive(joined("p", { offset: 3, epoch: "old" }));
    ws.serverClose(1001);
    await ctx.clock.advance(500);
    ctx.WS.last.open(); // rejoins p from offset 3
    ctx.client.leave("p"); // before the service answered the rejoin
    ctx.WS.last.receive(joined("p", { offset: 0, epoch: "new", recovered: false, reason: "epoch_changed" }));
    assert.equal(ctx.client.positions.has("p"), false);
  });
});

/**
 * The body of the first ```js (or ```javascript) block in the section of `markdown`
 * under the level-2 heading `heading`, up to the next level-2 heading.
 */
function jsBlockUnder(markdown, heading) {
  const lines = markdown.split(/\r?\n/);
  const start = lines.indexOf(`## ${heading}`);
  assert.ok(start >= 0, `the document has a "## ${heading}" section`);
  const end = lines.findIndex((line, i) => i > start && line.startsWith("## "));
  const section = lines.slice(start + 1, end < 0 ? undefined : end);
  const open = section.findIndex((line) => /^```(js|javascript)\s*$/.test(line));
  assert.ok(open >= 0, `a \`\`\`js block under "${heading}"`);
  const close = section.findIndex((line, i) => i > open && /^```\s*$/.test(line));
  assert.ok(close > open, "the block is closed");
  return section.slice(open + 1, close);
}

describe("docs/js-client.md", () => {
  test("its ten lines replacing a hand-written WebSocketManager work as written", async () => {
    const page = readFileSync(new URL("../../docs/js-client.md", import.meta.url), "utf8");
    const block = jsBlockUnder(page, "The client in ten lines");
    const all = block.filter((line) => line.trim());
    assert.equal(all.length, 10, "ten lines");
    assert.match(all[0], /^import \{ RoomcastClient \} from /);
    const lines = all.slice(1); // the import is the module's job here

    const WS = fakeWebSocketClass();
    const shown = [];
    const roomMessages = [];
    const badges = [];
    const fetch = async (path) => ({ text: async () => `token-from-${path}` });
    const run = new Function("RoomcastClient", "fetch", "showNotification", "handleRoomMessage", "setConnectionBadge",
      `${lines.join("\n")}\nreturn client;`);
    const saved = globalThis.WebSocket;
    globalThis.WebSocket = WS;
    let client;
    try {
      client = run(RoomcastClient, fetch, (...args) => shown.push(args), (...args) => roomMessages.push(args),
        (state, code) => badges.push([state, code]));
    } finally {
      globalThis.WebSocket = saved;
    }
    await settle();
    const ws = WS.last;
    assert.equal(ws.url, "ws://localhost:8000/api/v1/ws?token=token-from-%2Fapi%2Fws-token&recover=1");
    ws.open();
    ws.welcome(42);
    assert.deepEqual(ws.frames, [{ type: "join_room", room: "project_123", data: { recover: true } }]);
    ws.receive({ type: "info", message: "Export ready", data: { id: 7, level: "success", notification: true }, room: null });
    ws.receive({ type: "room_message", message: "hi", data: { from_user_id: 8 }, room: "project_123" });
    assert.deepEqual(shown, [["Export ready", "success", { id: 7 }]]);
    assert.deepEqual(roomMessages, [["project_123", 8, "hi"]]);
    assert.deepEqual(badges.map(([state]) => state), ["connecting", "open"]);
    client.close();
  });
});
