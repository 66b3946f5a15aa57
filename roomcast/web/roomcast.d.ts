// SPDX-License-Identifier: MIT
// Type declarations for roomcast.js, the roomcast WebSocket client.

export type Level = "info" | "success" | "warning" | "error";
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";
export type UserId = number | string;

/** Where a client got to in a room: the last frame's offset, in the room's epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** Every frame the service sends (docs/protocol.md, section 3). */
export interface Frame {
  type: "info" | "error" | "text" | "room_message" | "broadcast" | string;
  message: string;
  data: Record<string, unknown> | null;
  room: string | null;
  /** Frames through a room: its position (docs/protocol.md, 6b). */
  offset?: number;
  epoch?: string;
}

/** A frame the client sends (docs/protocol.md, section 4). */
export interface ClientFrame {
  type: "text" | "join_room" | "leave_room" | "room_message" | "broadcast" | "refresh_token" | string;
  room?: string;
  data?: unknown;
}

export interface TokenRequest {
  /** connect: the first; reconnect: after a close; expired: after 4001; refresh: renewal while connected. */
  reason: "connect" | "reconnect" | "expired" | "refresh";
  /** True when a cached token will not do: after 4001, a failure before open, or a renewal. */
  fresh: boolean;
  /** Failures since the last good open. */
  attempt: number;
  /** The close code that led here, when there was one. */
  lastCode: number | null;
}

export type GetToken = (request: TokenRequest) => string | Promise<string>;

export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code?: number; reason?: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface RoomcastOptions {
  /** ws:// or wss:// URL of the service's path, e.g. "ws://localhost:8000/api/v1/ws". */
  url: string;
  /** Called before every (re)connect and before the token expires; returns a JWT. */
  getToken: GetToken;
  /** The WebSocket class; defaults to globalThis.WebSocket (inject a fake in tests). */
  WebSocket?: WebSocketConstructor;
  /** First reconnect delay ceiling in ms (default 1000). */
  baseDelay?: number;
  /** Cap of the exponential growth in ms (default 30000). There is no give-up. */
  maxDelay?: number;
  /** Frames kept while offline (default 100); past it the oldest is dropped. */
  queueLimit?: number;
  /**
   * Send refresh_token this many ms before the token ends (default 30000), or at two
   * thirds of its life when that is sooner. The time left is the token's exp - iat from
   * when getToken returned it, so a wrong local clock does not matter.
   */
  refreshMargin?: number;
  /** Close codes after which the client stops instead of reconnecting (default [4008]). */
  stopCodes?: number[];
  /**
   * Remember each room's position and send it on rejoin and reconnect, so the service
   * replays missed frames (docs/protocol.md, 6b). Default true; false sends the seed's
   * plain join_room frames.
   */
  recover?: boolean;
  /** Where to listen for "online" (default globalThis: a browser's window) to cut a backoff short. */
  events?: { addEventListener?: EventTarget["addEventListener"]; removeEventListener?: EventTarget["removeEventListener"] };
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  now?: () => number;
  random?: () => number;
}

export interface StateEvent {
  state: ConnectionState;
  /** The close code, on "reconnecting" and "closed". */
  code?: number | null;
  reason?: string;
  /** The wait before the next attempt in ms, on "reconnecting". */
  delay?: number;
  attempt?: number;
}

export interface NotificationEvent {
  level: Level;
  message: string;
  /** The room, for room notifications (null for a user's or everyone's). */
  room: string | null;
  /** user: notify_user; room: notify_room / notify_user_in_room; all: broadcast. */
  target: "user" | "room" | "all" | string;
  /** The backend's extra data (without level and notification). */
  data: Record<string, unknown>;
  frame: Frame;
}

export interface MessageEvent {
  room: string;
  message: string;
  from: UserId | null;
  /** The value sent: the string, or the structured value (data.payload). */
  payload: unknown;
  frame: Frame;
}

export interface BroadcastEvent {
  message: string;
  from: UserId | null;
  payload: unknown;
  frame: Frame;
}

export interface ErrorEvent {
  /** frame: an error frame from the service; socket, token, protocol: on this side. */
  kind: "frame" | "socket" | "token" | "protocol";
  /** data.code for error frames (invalid_room, not_member, forbidden,
   *  room_token_expired, ...); get_room_token_failed when a room token function threw. */
  code: string;
  message: string;
  frame?: Frame;
  /** get_room_token_failed: the room whose token could not be had. */
  room?: string;
  error?: unknown;
}

export interface RecoveryEvent {
  room: string;
  /** true: the missed frames follow, in order; false: reload what you show from your API. */
  recovered: boolean;
  /** Why not: "epoch_changed" (history lost, e.g. a restart), "too_old" or "too_many". */
  reason: string | null;
  /** The room's position now, from the answer. */
  position: Position | null;
  /** How many missed frames follow (when recovered). */
  missed: number;
}

/** A socket ended: closed by the service or the network, or dropped by close() or reconnect(). */
export interface CloseEvent {
  code: number;
  reason: string;
  /** Whether the socket had opened (false for one dropped while it was still connecting). */
  opened: boolean;
  willReconnect: boolean;
}

export interface EventMap {
  state: StateEvent;
  welcome: { userId: UserId; rooms: string[]; position: Position | null; message: string; frame: Frame };
  rooms: { rooms: string[]; room: string; joined: boolean; position: Position | null; message: string; frame: Frame };
  /** The answer to a join (or the welcome, for the personal room) that asked to recover. */
  recovery: RecoveryEvent;
  refreshed: { expiresAt: number; message: string; frame: Frame };
  notification: NotificationEvent;
  "notification:info": NotificationEvent;
  "notification:success": NotificationEvent;
  "notification:warning": NotificationEvent;
  "notification:error": NotificationEvent;
  message: MessageEvent;
  broadcast: BroadcastEvent;
  text: { message: string; frame: Frame };
  info: { message: string; data: Record<string, unknown>; room: string | null; frame: Frame };
  error: ErrorEvent;
  close: CloseEvent;
  /** A join refused (`forbidden`, naming the room): the room is no longer in
   *  `rooms`, so it is not sent again on reconnect; join() it again when allowed. */
  refused: { room: string; code: string; message: string; frame: Frame };
  /** After a stop code (4008): no retry; call connect() to resume. */
  stopped: { code: number; reason: string };
  /** A queued frame dropped because the offline queue was full. */
  dropped: { frame: ClientFrame; queued: number };
  /** Every frame from the service, before routing. */
  frame: Frame;
}

export class Emitter<M = EventMap> {
  on<K extends keyof M>(type: K, listener: (detail: M[K]) => void): () => void;
  off<K extends keyof M>(type: K, listener: (detail: M[K]) => void): void;
  once<K extends keyof M>(type: K, listener: (detail: M[K]) => void): () => void;
  emit<K extends keyof M>(type: K, detail: M[K]): void;
}

export class RoomcastClient extends Emitter<EventMap> {
  constructor(options: RoomcastOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** Rooms joined through join(): rejoined after every reconnect. */
  readonly rooms: Set<string>;
  /** This connection's rooms as the service last listed them. */
  readonly serverRooms: string[];
  /** The highest position seen in each room (the personal room user_ID included):
   *  the highest offset within an epoch; a position in another epoch replaces it. */
  readonly positions: Map<string, Position>;
  /** From the welcome frame; null before the first. */
  readonly userId: UserId | null;
  readonly connected: boolean;
  readonly queue: OfflineQueue;
  readonly attempt: number;
  readonly stats: { opens: number; tokens: number; refreshes: number };
  /** Start connecting, or resume after a stop (4008). */
  connect(): void;
  /** Drop the current connection, if any, and connect again now, without backoff. */
  reconnect(): void;
  /** Close for good (default 1000): no reconnect. */
  close(code?: number, reason?: string): void;
  /** True if sent now, false if queued until the next open. */
  send(frame: ClientFrame): boolean;
  /** Join now and after every reconnect. `token`: a room token for a closed room, its
   *  text (sent again on every rejoin) or a function asked before every join
   *  (`reason` "expired": the service left the room at the token's expiry). */
  join(room: string, options?: { token?: string | RoomTokenSource }): void;
  leave(room: string): void;
  sendToRoom(room: string, data: unknown): boolean;
  broadcast(data: unknown): boolean;
  text(data: unknown): boolean;
}

export class OfflineQueue {
  constructor(limit?: number);
  readonly limit: number;
  readonly size: number;
  /** Returns the frames dropped to make room, oldest first. */
  push(frame: ClientFrame): ClientFrame[];
  drain(): ClientFrame[];
  clear(): void;
}

export const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  TOO_BIG: 1009;
  INTERNAL_ERROR: 1011;
  HEARTBEAT_TIMEOUT: 4000;
  TOKEN_EXPIRED: 4001;
  POLICY: 4008;
  SLOW_CONSUMER: 4009;
}>;
export const LEVELS: readonly Level[];
export const ROOM_NAME: RegExp;
export const DEFAULTS: Readonly<
  Required<Pick<RoomcastOptions, "baseDelay" | "maxDelay" | "queueLimit" | "refreshMargin" | "stopCodes" | "recover">>
>;

/** Full jitter: uniform in [0, min(maxDelay, baseDelay * 2 ** attempt)). */
export function backoffDelay(
  attempt: number,
  options?: { baseDelay?: number; maxDelay?: number; random?: () => number },
): number;
/** [eventName, detail] pairs for one frame from the service. */
export function routeFrame(frame: unknown): Array<[keyof EventMap, unknown]>;
/** The token's exp and iat claims in seconds (null when absent), or null if not a JWT. */
export function tokenTimes(token: string): { exp: number | null; iat: number | null } | null;
/** ms the token has left `elapsed` ms after it was received (by exp - iat when it has iat), or null. */
export function tokenTimeLeft(token: string, now: number, elapsed?: number): number | null;
/** ms to wait before renewing a token with `left` ms to live. */
export function refreshDelay(left: number, margin?: number): number;
/** `url` with `token`, and with recover: the personal room's position (or recover=1). */
export function connectUrl(
  url: string,
  token: string | null | undefined,
  options?: { recover?: boolean; position?: Position | null },
): string;
/** A frame's (or a reply data's) room position, or null. */
export function positionOf(source: unknown): Position | null;
/** The position to keep after seeing `seen` while holding `held`: within one epoch the
 *  higher offset, otherwise `seen` (a new epoch starts over). */
export function laterPosition(held: Position | null | undefined, seen: Position | null | undefined): Position | null;
/** Gets a room token for `room` (your backend mints it). */
export type RoomTokenSource = (request: {
  room: string;
  reason: "join" | "rejoin" | "expired";
}) => Promise<string> | string;

/** join_room's data: the position to recover from, or {recover: true}. */
export function joinData(position: Position | null | undefined): Position | { recover: true };

export default RoomcastClient;
