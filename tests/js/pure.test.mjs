// The client's pure parts: backoff, the offline queue, frame routing, positions, tokens.
// Run with: node --test tests/js/
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  DEFAULTS,
  OfflineQueue,
  backoffDelay,
  refreshDelay,
  routeFrame,
  connectUrl,
  joinData,
  laterPosition,
  positionOf,
  tokenTimeLeft,
  tokenTimes,
} from "../../roomcast/web/roomcast.js";

const jwt = (claims) => {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.signature`;
};

describe("backoffDelay", () => {
  const top = () => 0.999999; // the largest value Math.random can give, about

  test("the ceiling doubles with each attempt from baseDelay", () => {
    const ceilings = [0, 1, 2, 3, 4].map((n) => backoffDelay(n, { baseDelay: 100, maxDelay: 1e9, random: top }));
    assert.deepEqual(ceilings, [99, 199, 399, 799, 1599]);
  });

  test("the growth is capped at maxDelay, and never gives up", () => {
    for (const n of [5, 10, 50, 1000, 1e6, Infinity]) {
      const delay = backoffDelay(n, { baseDelay: 1000, maxDelay: 30000, random: top });
      assert.ok(delay <= 30000 && delay >= 29999, `attempt ${n}: ${delay}`);
    }
  });

  test("full jitter: uniform between 0 and the ceiling", () => {
    assert.equal(backoffDelay(3, { baseDelay: 100, random: () => 0 }), 0);
    assert.equal(backoffDelay(3, { baseDelay: 100, random: () => 0.5 }), 400);
    const seen = Array.from({ length: 2000 }, () => backoffDelay(4, { baseDelay: 100, maxDelay: 1e9 }));
    assert.ok(seen.every((d) => d >= 0 && d < 1600), "within [0, 1600)");
    assert.ok(Math.min(...seen) < 200 && Math.max(...seen) > 1400, "spread over the range");
    assert.ok(new Set(seen).size > 500, "not a fixed value");
  });

  test("defaults: about a second at first, 30 s at most", () => {
    assert.equal(DEFAULTS.baseDelay, 1000);
    assert.equal(DEFAULTS.maxDelay, 30000);
    assert.ok(backoffDelay(0, { random: top }) < 1000);
    assert.ok(backoffDelay(99, { random: top }) < 30000);
    assert.equal(backoffDelay(-3, { random: top }), 999, "a negative attempt counts as the first");
  });
});

describe("OfflineQueue", () => {
  test("keeps frames in order and drains them all at once", () => {
    const queue = new OfflineQueue(10);
    for (let i = 0; i < 5; i++) assert.deepEqual(queue.push({ type: "text", data: i }), []);
    assert.equal(queue.size, 5);
    assert.deepEqual(queue.drain().map((f) => f.data), [0, 1, 2, 3, 4]);
    assert.equal(queue.size, 0);
    assert.deepEqual(queue.drain(), []);
  });

  test("is bounded: the oldest frames are dropped and returned", () => {
    const queue = new OfflineQueue(3);
    const dropped = [];
    for (let i = 0; i < 7; i++) dropped.push(...queue.push({ type: "text", data: i }));
    assert.deepEqual(dropped.map((f) => f.data), [0, 1, 2, 3]);
    assert.equal(queue.size, 3);
    assert.deepEqual(queue.drain().map((f) => f.data), [4, 5, 6]);
  });

  test("a limit of 0 keeps nothing", () => {
    const queue = new OfflineQueue(0);
    assert.deepEqual(queue.push({ type: "text", data: 1 }), [{ type: "text", data: 1 }]);
    assert.equal(queue.size, 0);
  });

  test("refuses a nonsense limit", () => {
    assert.throws(() => new OfflineQueue(-1), RangeError);
    assert.throws(() => new OfflineQueue(1.5), RangeError);
  });
});

describe("routeFrame", () => {
  const events = (frame) => routeFrame(frame).map(([name]) => name);

  test("the welcome", () => {
    const [[name, detail]] = routeFrame({
      type: "info", message: "Connected successfully. You are in room: user_7",
      data: { user_id: 7, rooms: ["user_7"] }, room: null,
    });
    assert.equal(name, "welcome");
    assert.equal(detail.userId, 7);
    assert.deepEqual(detail.rooms, ["user_7"]);
  });

  test("join and leave replies", () => {
    const [[, joined]] = routeFrame({ type: "info", message: "Joined room: p", data: { rooms: ["user_7", "p"] }, room: "p" });
    assert.equal(joined.joined, true);
    assert.deepEqual(joined.rooms, ["user_7", "p"]);
    const [[name, left]] = routeFrame({ type: "info", message: "Left room: p", data: { rooms: ["user_7"] }, room: "p" });
    assert.equal(name, "rooms");
    assert.equal(left.joined, false);
  });

  test("positions and recovery answers (docs/protocol.md, 6b)", () => {
    const [[, rooms], [name, recovery]] = routeFrame({
      type: "info", message: "Joined room: p",
      data: { rooms: ["user_7", "p"], offset: 5, epoch: "e1", recovered: false, reason: "epoch_changed" }, room: "p",
    });
    assert.deepEqual(rooms.position, { offset: 5, epoch: "e1" });
    assert.equal(name, "recovery");
    assert.deepEqual(recovery, { room: "p", recovered: false, reason: "epoch_changed", position: { offset: 5, epoch: "e1" } });

    const welcome = routeFrame({
      type: "info", message: "Connected", data: { user_id: 7, rooms: ["user_7"], offset: 2, epoch: "u", recovered: true }, room: null,
    });
    assert.deepEqual(welcome.map(([n]) => n), ["welcome", "recovery"]);
    assert.deepEqual([welcome[1][1].room, welcome[1][1].recovered], ["user_7", true]);

    const plain = routeFrame({ type: "info", message: "Joined room: p", data: { rooms: ["user_7", "p"] }, room: "p" });
    assert.deepEqual(plain.map(([n]) => n), ["rooms"], "the seed's reply: no recovery event");
    assert.equal(plain[0][1].position, null);
  });

  test("positionOf and joinData", () => {
    assert.deepEqual(positionOf({ type: "room_message", room: "p", offset: 3, epoch: "e" }), { offset: 3, epoch: "e" });
    for (const bad of [null, {}, { offset: 3 }, { offset: -1, epoch: "e" }, { offset: 1.5, epoch: "e" }, { offset: 1, epoch: "" }]) {
      assert.equal(positionOf(bad), null, JSON.stringify(bad));
    }
    assert.deepEqual(joinData({ offset: 41, epoch: "9f2c41d0" }), { offset: 41, epoch: "9f2c41d0" });
    assert.deepEqual(joinData(null), { recover: true });
  });

  test("laterPosition keeps the highest offset within an epoch; a new epoch replaces it", () => {
    const at = (offset, epoch = "e1") => ({ offset, epoch });
    assert.deepEqual(laterPosition(null, at(3)), at(3));
    assert.deepEqual(laterPosition(at(3), null), at(3));
    assert.deepEqual(laterPosition(at(5), at(6)), at(6));
    assert.deepEqual(laterPosition(at(5), at(4)), at(5), "a late frame does not move it back");
    assert.deepEqual(laterPosition(at(5), at(5)), at(5));
    assert.deepEqual(laterPosition(at(5), at(0, "e2")), at(0, "e2"), "another epoch starts over");
  });

  test("the refresh_token reply", () => {
    const [[name, detail]] = routeFrame({ type: "info", message: "Token refreshed", data: { expires_at: 1767225600.5 }, room: null });
    assert.equal(name, "refreshed");
    assert.equal(detail.expiresAt, 1767225600.5);
  });

  test("a room message, as text and structured", () => {
    const [[name, detail]] = routeFrame({ type: "room_message", message: "Hello", data: { from_user_id: 8 }, room: "p" });
    assert.equal(name, "message");
    assert.deepEqual([detail.room, detail.message, detail.from, detail.payload], ["p", "Hello", 8, "Hello"]);
    const [[, structured]] = routeFrame({
      type: "room_message", message: '{"x":1}', data: { from_user_id: 8, payload: { x: 1 } }, room: "p",
    });
    assert.deepEqual(structured.payload, { x: 1 });
  });

  test("a broadcast from a user", () => {
    const [[name, detail]] = routeFrame({ type: "broadcast", message: "Deploy finished", data: { from_user_id: 7 }, room: null });
    assert.equal(name, "broadcast");
    assert.equal(detail.from, 7);
  });

  test("an error frame, by data.code", () => {
    const [[name, detail]] = routeFrame({ type: "error", message: "Not a member of room: p", data: { code: "not_member" }, room: null });
    assert.equal(name, "error");
    assert.deepEqual([detail.kind, detail.code], ["frame", "not_member"]);
  });

  test("the echo", () => {
    assert.deepEqual(events({ type: "text", message: "Echo: hi", data: null, room: null }), ["text"]);
  });

  test("notifications of every kind, by level", () => {
    const user = routeFrame({
      type: "info", message: "Uploaded", data: { project_id: 456, level: "success", notification: true }, room: null,
    });
    assert.deepEqual(user.map(([n]) => n), ["notification", "notification:success"]);
    const detail = user[0][1];
    assert.deepEqual([detail.level, detail.target, detail.message], ["success", "user", "Uploaded"]);
    assert.deepEqual(detail.data, { project_id: 456 });

    const room = routeFrame({ type: "room_message", message: "New result", data: { level: "info", notification: true }, room: "p" });
    assert.deepEqual(room.map(([n]) => n), ["notification", "notification:info"]);
    assert.deepEqual([room[0][1].target, room[0][1].room], ["room", "p"]);

    const all = routeFrame({ type: "broadcast", message: "Maintenance", data: { level: "warning", notification: true }, room: null });
    assert.deepEqual(all.map(([n]) => n), ["notification", "notification:warning"]);
    assert.equal(all[0][1].target, "all");

    const err = routeFrame({ type: "info", message: "Failed", data: { level: "error", notification: true }, room: null });
    assert.equal(err[1][0], "notification:error");
  });

  test("an unknown level reads as info; other info frames as info", () => {
    assert.equal(routeFrame({ type: "info", message: "x", data: { level: "loud", notification: true }, room: null })[0][1].level, "info");
    assert.deepEqual(events({ type: "info", message: "Something", data: null, room: null }), ["info"]);
    assert.deepEqual(events({ type: "future_type", message: "?", data: null, room: null }), ["info"]);
  });

  test("not a frame at all", () => {
    for (const bad of [null, 3, "x", [], { message: "no type" }]) {
      const [[name, detail]] = routeFrame(bad);
      assert.equal(name, "error");
      assert.equal(detail.kind, "protocol");
    }
  });
});

describe("tokens", () => {
  test("tokenTimes reads exp and iat from a JWT, or null", () => {
    assert.deepEqual(tokenTimes(jwt({ sub: "7", iat: 1767222000, exp: 1767225600 })), { exp: 1767225600, iat: 1767222000 });
    assert.deepEqual(tokenTimes(jwt({ sub: "ünïcode", exp: 12.5 })), { exp: 12.5, iat: null });
    assert.deepEqual(tokenTimes(jwt({ sub: "7", exp: "soon" })), { exp: null, iat: null });
    assert.equal(tokenTimes("opaque-session-token"), null);
    assert.equal(tokenTimes("a.!!!.c"), null);
    assert.equal(tokenTimes(undefined), null);
  });

  test("tokenTimeLeft: by the token's lifetime when it has iat, whatever the local clock", () => {
    const serverNow = 1_767_222_000;
    const token = jwt({ sub: "7", iat: serverNow, exp: serverNow + 60 });
    const skewed = (serverNow - 3 * 3600) * 1000; // a browser three hours behind
    assert.equal(tokenTimeLeft(token, skewed), 60_000);
    assert.equal(tokenTimeLeft(token, skewed, 15_000), 45_000);
    // Without iat, exp against the local clock is all there is.
    assert.equal(tokenTimeLeft(jwt({ exp: serverNow + 60 }), serverNow * 1000), 60_000);
    assert.equal(tokenTimeLeft(jwt({ sub: "7" }), serverNow * 1000), null);
    assert.equal(tokenTimeLeft("opaque", serverNow * 1000), null);
  });

  test("refreshDelay: the margin before the end, at most a third of what is left", () => {
    assert.equal(refreshDelay(3_600_000, 30000), 3_570_000);
    assert.equal(refreshDelay(3000, 30000), 2000);
    assert.equal(refreshDelay(0, 30000), 0);
    assert.equal(refreshDelay(-5000, 30000), 0);
    assert.equal(refreshDelay(90_000), 60_000, "the default margin is 30 s");
  });

  test("connectUrl puts the token and the personal room's position in the query", () => {
    assert.equal(connectUrl("ws://h:8000/api/v1/ws", "a.b+c"), "ws://h:8000/api/v1/ws?token=a.b%2Bc");
    assert.equal(connectUrl("ws://h/ws?x=1", "t"), "ws://h/ws?x=1&token=t");
    assert.equal(connectUrl("ws://h/ws", null), "ws://h/ws");
    assert.equal(connectUrl("ws://h/ws", "t", { recover: true }), "ws://h/ws?token=t&recover=1");
    assert.equal(
      connectUrl("ws://h/ws", "t", { recover: true, position: { offset: 41, epoch: "9f2c41d0" } }),
      "ws://h/ws?token=t&offset=41&epoch=9f2c41d0",
    );
    assert.equal(connectUrl("ws://h/ws", "t", { recover: false, position: { offset: 1, epoch: "e" } }), "ws://h/ws?token=t");
  });
});
