"""Connection actor: one per WebSocket. It owns the connection's rooms, its outbox
and its fate; other actors reach it only by handing frames to `deliver`, which never
waits, or by asking it to close."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import attrs
import trio

from roomcast.actors.base import ActorCrashed, Reply
from roomcast.actors.keeper import Keeper
from roomcast.actors.outbox import Outbox
from roomcast.actors.registry import Connect, Disconnect, JoinRoom, LeaveRoom, Registry
from roomcast.actors.room import LOBBY
from roomcast.actors.streams import BackplaneUnavailable
from roomcast.actors.websocket import ConnectionClosed, WebSocket
from roomcast.auth import (
    Authenticator,
    AuthError,
    JwtAuthenticator,
    Principal,
    RoomAuthorizer,
    log_failure_once,
)
from roomcast.config import Config
from roomcast.protocol import (
    ClientFrame,
    CloseCode,
    ErrorCode,
    MessageType,
    Position,
    ProtocolError,
    ServerFrame,
    decode,
    encode_body,
    encode_frame,
    error_frame,
    is_personal_room,
    message_text,
    personal_room,
    position_from,
)
from roomcast.protocol.access import RoomAccess, Rule, refusal_text
from roomcast.protocol.policing import Policing, Verdict
from roomcast.protocol.roomlog import Recovery

log = logging.getLogger(__name__)

_ids = itertools.count(1)


def next_connection_id() -> int:
    """Ids are given at accept time, so that every log line of a socket has one."""
    return next(_ids)


def position_data(recovery: Recovery) -> dict[str, Any]:
    """A room position in a reply: where the room is, and whether recovery worked."""
    data: dict[str, Any] = {"offset": recovery.offset, "epoch": recovery.epoch}
    if recovery.recovered is not None:
        data["recovered"] = recovery.recovered
    if recovery.reason is not None:
        data["reason"] = recovery.reason.value
    return data


@attrs.frozen
class Admission:
    """The answer of the join rules: the rule that allowed (None: refused), the room
    token's expiry when that rule is the room token, and why a room token was refused."""

    rule: Rule | None
    expires_at: float | None = None
    why: str | None = None


@attrs.frozen
class JoinRules:
    """Who may join a room, as the service was configured: the rules that need no
    waiting (`protocol.access`), the room token's verifier (None without JWT settings),
    and the application's authorizers, asked last, each within `timeout` seconds.
    Cheapest first: the first rule that allows ends the search."""

    access: RoomAccess = attrs.field(factory=RoomAccess)
    rooms_claim: str = "rooms"
    room_tokens: JwtAuthenticator | None = None
    authorizer: RoomAuthorizer | None = None
    http_authorizer: RoomAuthorizer | None = None
    timeout: float = 3.0

    @classmethod
    def closed(cls) -> JoinRules:
        """No room opens but the personal one."""
        return cls()

    async def admit(self, principal: Principal, room: str, own_personal_room: str,
                    token: str | None) -> Admission:
        rule = self.access.decide(room, own_personal_room, principal.rooms)
        if rule is not None:
            return Admission(rule)
        why = None
        if token is not None:
            if self.room_tokens is None:
                why = "room tokens need the service's JWT settings, which it does not have"
            else:
                try:
                    expires_at = self.room_tokens.verify_room_token(
                        token, principal.user_id, room)
                except AuthError as error:
                    why = f"room token refused: {error.message.lower()}"
                else:
                    return Admission(Rule.ROOM_TOKEN, expires_at)
        for rule, authorizer in ((Rule.AUTHORIZER, self.authorizer),
                                 (Rule.HTTP_AUTHORIZER, self.http_authorizer)):
            if authorizer is not None and await self._ask(rule, authorizer, principal, room):
                return Admission(rule)
        return Admission(None, why=why)

    async def _ask(self, rule: Rule, authorizer: RoomAuthorizer, principal: Principal,
                   room: str) -> bool:
        """The authorizer's answer: only True allows; an exception or a time-out
        refuses, logged by its type name once per cause (its text may hold a token)."""
        with trio.move_on_after(self.timeout) as waited:
            try:
                return await authorizer(principal, room) is True
            except Exception as exc:
                log_failure_once(f"the {rule.value}", exc)
                return False
        if waited.cancelled_caught:
            log_failure_once(f"the {rule.value}", TimeoutError())
        return False


class Connection:
    def __init__(
        self,
        conn_id: int,
        principal: Principal,
        ws: WebSocket,
        outbox: Outbox,
        registry: Registry,
        keeper: Keeper,
        authenticate: Authenticator,
        config: Config,
        rules: JoinRules | None = None,
    ) -> None:
        self.id = conn_id
        self.principal = principal
        self.user_id = principal.user_id
        self.personal_room = personal_room(principal.user_id)
        self.ws = ws
        self.deflate = ws.deflate  # a room sends it the compressed variant of its frames
        self.outbox = outbox
        self.registry = registry
        self.keeper = keeper
        self._authenticate = authenticate
        self._config = config
        self._rules = rules or JoinRules.closed()
        self._policing = Policing(config.rate_limit, config.rate_burst, config.max_strikes,
                                  trio.current_time())
        self.rooms: dict[str, None] = {}  # joined rooms, in join order (an ordered set)
        self.close_code = CloseCode.NORMAL
        self.close_reason = "bye"
        self._scope = trio.CancelScope()
        # Frames published to this connection before its welcome went out: the welcome
        # is sent only once the connection is registered, and must still come first.
        self._before_welcome: list[bytes] | None = []
        self.resume_from: Position | None = None  # the handshake's personal-room position
        outbox.on_overflow = self._on_overflow

    def __repr__(self) -> str:
        return f"<connection {self.id} user={self.user_id!r}>"

    @property
    def last_received(self) -> float:
        """When the socket last received a byte (Trio time): the keeper's heartbeat."""
        return self.outbox.last_received

    @property
    def expires_at(self) -> float | None:
        """When the token expires (wall-clock seconds): the keeper's 4001."""
        return self.principal.expires_at

    # what other actors may do ---------------------------------------------------------

    def deliver(self, frame: bytes, *, later: bool = False) -> bool:
        """Queue complete frame bytes without waiting; False if they were dropped.
        `later`: written at the next `flush` (a big fan-out's frames), not now."""
        if self.ws.closed is not None:
            self.registry.metrics.not_delivered("closed")
            return False
        if self._before_welcome is not None:
            self._before_welcome.append(frame)
            return True
        outbox = self.outbox
        if outbox.write_later(frame) if later else outbox.write_nowait(frame):
            return True
        self.registry.metrics.not_delivered("slow_consumer" if self.outbox.overflowed else "closed")
        return False

    def flush(self) -> None:
        """Write the frames delivered `later`."""
        self.outbox.flush()

    def deliver_welcome(self, welcome: bytes, missed: list[bytes]) -> None:
        """The personal room greets us: the welcome, the personal frames we missed, then
        whatever other rooms sent meanwhile."""
        early, self._before_welcome = self._before_welcome or [], None
        for frame in (welcome, *missed, *early):
            self.deliver(frame)

    def request_close(self, code: CloseCode, reason: str) -> None:
        """Ask the actor to stop; it closes the socket with `code` on its way out."""
        if not self._scope.cancel_called:
            self.close_code = code
            self.close_reason = reason
            self._scope.cancel()

    def _on_overflow(self) -> None:
        log.warning("conn %d user=%r: slow consumer, closing with 4009", self.id, self.user_id)
        self.request_close(CloseCode.SLOW_CONSUMER, "slow consumer")

    # the actor ------------------------------------------------------------------------

    def all_rooms(self) -> list[str]:
        return [self.personal_room, *self.rooms]

    async def run(self) -> None:
        """Register, greet, then serve client frames until either side closes."""
        try:
            with self._scope:
                # Registered first: once a client has its welcome, it is reachable. The
                # personal room sends the welcome, then what this client missed.
                greeting = Connect(self, Reply(), self._welcome_frame, self.resume_from)
                await self.registry.call(greeting)
                await self._read_loop()
        finally:
            # Cancellation cannot leave the registry pointing at a dead connection: the
            # (inline) registry handles its messages shielded, and nothing before that
            # is a checkpoint. `rooms` is emptied as the registry takes us out of them
            # all, so that the keeper (a room token's expiry, until the gateway
            # unwatches us) cannot leave one of them a second time.
            rooms = tuple(self.all_rooms())
            self.rooms.clear()
            await self.registry.send(Disconnect(self, rooms))

    FAILURES_SUMMED_EVERY = 100  # frames failing by a bug: one log line per this many

    async def _read_loop(self) -> None:
        # A frame whose handling raises anything but a ProtocolError found a bug. The
        # client gets an internal_error frame and the connection goes on: each frame is
        # handled whole or not at all (the registry and rooms handle their messages
        # whole), so one failed frame leaves nothing half done, and the client and its
        # rooms keep working. It counts as a strike, so a client that keeps hitting the
        # bug is closed with 4008 all the same. The log gets the first traceback only,
        # then a count every FAILURES_SUMMED_EVERY failures and at the end: a client
        # cannot turn one bug into a traceback per frame.
        failures = 0
        try:
            while True:
                try:
                    text = await self.ws.get_message()
                except ConnectionClosed:
                    return
                refusal: ProtocolError | None = None
                try:
                    if not self._policing.admit(trio.current_time()):
                        raise ProtocolError.rate_limited()
                    await self._handle(decode(text))
                    self._policing.accepted()
                except ProtocolError as error:
                    refusal = error
                except Exception:
                    failures += 1
                    refusal = ProtocolError.internal()
                    if failures == 1:
                        log.exception("conn %d user=%r: a frame's handling failed; the "
                                      "client got internal_error (repeats are counted, "
                                      "not logged)", self.id, self.user_id)
                    elif failures % self.FAILURES_SUMMED_EVERY == 0:
                        log.error("conn %d user=%r: %d frames' handling failed so far "
                                  "(the first is logged above)", self.id, self.user_id,
                                  failures)
                if refusal is None:
                    continue
                self.registry.metrics.refused(refusal.code)
                self._reply(error_frame(refusal))
                if self._policing.refused() is Verdict.CLOSE:
                    log.warning("conn %d user=%r: %d refused frames in a row, closing "
                                "with 4008", self.id, self.user_id, self._policing.strikes)
                    self.request_close(CloseCode.POLICY, "too many refused frames")
        finally:
            if failures > 1 and failures % self.FAILURES_SUMMED_EVERY:
                log.error("conn %d user=%r: %d frames' handling failed in all (the first "
                          "is logged above)", self.id, self.user_id, failures)

    async def _handle(self, frame: ClientFrame) -> None:
        self.registry.metrics.received(frame.type)
        if frame.type == MessageType.TEXT:
            text, _ = message_text(frame.data)
            self._reply(ServerFrame(type=MessageType.TEXT, message=f"Echo: {text}"))
        elif frame.type == MessageType.JOIN_ROOM:
            await self._join(frame.room, position_from(frame.data),  # type: ignore[arg-type]
                             frame.token)
        elif frame.type == MessageType.LEAVE_ROOM:
            await self._leave(frame.room)  # type: ignore[arg-type]
        elif frame.type == MessageType.ROOM_MESSAGE:
            await self._room_message(frame.room, frame.data)  # type: ignore[arg-type]
        elif frame.type == MessageType.BROADCAST:
            await self._broadcast(frame.data)
        elif frame.type == MessageType.REFRESH_TOKEN:
            await self._refresh(frame.data)

    def _welcome_frame(self, recovery: Recovery) -> bytes:
        data: dict[str, Any] = {"user_id": self.user_id, "rooms": [self.personal_room]}
        if self.resume_from is not None:
            data.update(position_data(recovery))
        return encode_frame(
            ServerFrame(
                type=MessageType.INFO,
                message=f"Connected successfully. You are in room: {self.personal_room}",
                data=data,
            )
        )

    def _reply(self, frame: ServerFrame) -> None:
        if self.deliver(encode_frame(frame)):
            self.registry.metrics.replied(frame.type)

    def _rooms_reply(self, message: str, room: str) -> None:
        self._reply(
            ServerFrame(
                type=MessageType.INFO,
                message=f"{message}: {room}",
                room=room,
                data={"rooms": self.all_rooms()},
            )
        )

    async def _join(self, room: str, position: Position | None, token: str | None) -> None:
        """Join `room` if a rule allows it (`JoinRules`). A re-join of a room this
        connection is in is answered at once, unless it carries a room token: then the
        rules are asked again, and a fresh room token moves the room's expiry."""
        if is_personal_room(room) and room != self.personal_room:
            raise ProtocolError.forbidden("another user's personal room")
        if room == self.personal_room or (room in self.rooms and token is None):
            self._rooms_reply("Joined room", room)
            return
        if room not in self.rooms and len(self.rooms) >= self._config.max_rooms_per_connection:
            raise ProtocolError.too_many_rooms(self._config.max_rooms_per_connection)
        # May wait on an authorizer (at most join_timeout): this connection's frames
        # wait meanwhile, no one else's.
        admission = await self._rules.admit(self.principal, room, self.personal_room, token)
        if admission.rule is None:
            self._refuse_join(room, admission.why)
            return
        # This connection handles one frame at a time: no other join ran meanwhile
        # (the keeper may only have left a room), so the count checked above holds.
        if room in self.rooms:  # a re-join with a room token: only the expiry moves
            self.keeper.watch_room(self, room, admission.expires_at)
            self._rooms_reply("Joined room", room)
            return
        rooms = [*self.all_rooms(), room]

        def answer(recovery: Recovery) -> bytes:
            data: dict[str, Any] = {"rooms": rooms}
            if position is not None:
                data.update(position_data(recovery))
            message = f"Joined room: {room}"
            return encode_frame(ServerFrame(MessageType.INFO, message, data, room))

        # The room sends the answer itself, then any frames we missed.
        join = JoinRoom(self, room, Reply(), answer, position)
        # Handled (or queued) whole, cancelled or not: the registry handles its
        # messages shielded. It joins us whatever happens next, so our Disconnect
        # must name the room even if we are cancelled (4009, 4001...) before the answer.
        await self.registry.send(join)
        self.rooms[room] = None
        self.keeper.watch_room(self, room, admission.expires_at)
        await join.reply.wait()

    def _refuse_join(self, room: str, why: str | None) -> None:
        """A closed room: an answer, but no strike (the client did nothing wrong)."""
        self.registry.metrics.refused(ErrorCode.FORBIDDEN)
        text = refusal_text(room, rooms_claim=self._rules.rooms_claim, why=why)
        self._reply(ServerFrame(MessageType.ERROR, text, {"code": ErrorCode.FORBIDDEN}, room))

    async def _leave(self, room: str) -> None:
        if room == self.personal_room:
            raise ProtocolError.forbidden("leaving your personal room")
        if room in self.rooms:
            # Out of `rooms` first: the keeper's leave at a room token's expiry and
            # ours cannot both tell the registry; nor can our Disconnect.
            del self.rooms[room]
            self.keeper.watch_room(self, room, None)
            leave = LeaveRoom(self, room, Reply())
            await self.registry.send(leave)  # handled whole, as a join is
            await leave.reply.wait()
        self._rooms_reply("Left room", room)

    async def leave_expired_room(self, room: str) -> None:
        """The keeper: this room's room token expired. Left, with an event (frames the
        room sent before may still arrive after it)."""
        if room not in self.rooms:
            return
        del self.rooms[room]
        try:
            await self.registry.send(LeaveRoom(self, room, Reply()))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the service is stopping
        self._reply(ServerFrame(
            MessageType.ERROR,
            f"Room token expired: left room {room}; join again with a fresh room token",
            {"code": ErrorCode.ROOM_TOKEN_EXPIRED, "rooms": self.all_rooms()},
            room,
        ))

    async def _room_message(self, room: str, data: Any) -> None:
        if room != self.personal_room and room not in self.rooms:
            raise ProtocolError.not_member(room)
        text, extra = message_text(data)
        frame = ServerFrame(
            type=MessageType.ROOM_MESSAGE,
            message=text,
            room=room,
            data={"from_user_id": self.user_id, **extra},
        )
        await self._send(room, frame)

    async def _broadcast(self, data: Any) -> None:
        if not self.principal.can_broadcast:
            raise ProtocolError.forbidden("broadcasting needs the broadcast permission")
        text, extra = message_text(data)
        frame = ServerFrame(
            type=MessageType.BROADCAST, message=text, data={"from_user_id": self.user_id, **extra}
        )
        await self._send(LOBBY, frame)

    async def _refresh(self, token: Any) -> None:
        """A fresh token for the same user moves the expiry; anything else leaves it."""
        if not isinstance(token, str) or not token:
            raise ProtocolError.invalid("'data' must be the new token")
        try:
            principal = await self._authenticate(token)
        except AuthError as error:
            raise ProtocolError.invalid_token(error.message.lower()) from None
        if principal is None:
            raise ProtocolError.invalid_token("token rejected")
        if principal.user_id != self.user_id:
            raise ProtocolError.forbidden("a token for another user")
        self.principal = principal
        self.keeper.watch(self)
        log.info("conn %d user=%r: token refreshed", self.id, self.user_id)
        self._reply(
            ServerFrame(
                type=MessageType.INFO,
                message="Token refreshed",
                data={"expires_at": principal.expires_at},
            )
        )

    async def _send(self, room: str, frame: ServerFrame) -> None:
        try:
            await self.registry.publish(room, encode_body(frame))
        except ActorCrashed:
            raise ProtocolError.internal() from None
        except BackplaneUnavailable:
            # Delivered on this node; the outage is logged and shown by the readiness
            # check, and the client's frame is not the client's fault.
            log.debug("conn %d: other nodes not reached (Redis down)", self.id)
