"""Actors: what a supervisor runs, and the two ways a message reaches one.

`MessageActor` is the one interface (`send`, `call`, `stop`, `close_mailbox`, and the
hooks `handle`, `recover`, `idle`, `tick`, `deadline`, `on_crash`). How a message
reaches `handle` is its runner's job, chosen once when the actor is built:

- `Mailbox`: a bounded Trio memory channel and a loop in the actor's own task (rooms,
  the lobby);
- `Inline`: no task and no channel; the sender's task handles the message, one at a
  time, in the order sent (the registry, a lone node's personal rooms). Measured: a
  task and a channel per actor, and two task switches per message, saved
  (ARCHITECTURE.md's actor map has the figures).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs
import trio

from roomcast.metrics import UNCOUNTED, Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

_RECOVER = object()  # an inline actor's note to itself: recover before the next message
_TICK = object()  # an inline actor's tick, handled in turn with its messages
_DEADLINE = object()  # an inline actor's `deadline` passed: `at_deadline`, in turn too


class ActorCrashed(Exception):
    """The actor handling a request crashed before it could answer."""


class Reply(Generic[T]):
    """A one-shot answer slot: cheaper than a channel, and failed if the actor crashes."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    async def wait(self) -> T:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


@attrs.define
class Crash:
    """Fault injection: an actor armed with `accept_crashes` raises `error` when it
    handles this message (and its `reply` fails, as any request's would)."""

    error: BaseException
    reply: Reply[Any] | None = None


def accept_crashes(actor: MessageActor) -> None:
    """A test seam: from now on `actor` raises on a `Crash` message. It costs nothing
    to an actor never armed: the runners do not look for `Crash` messages."""
    handle = actor.handle

    async def handle_or_crash(message: Any) -> None:
        if isinstance(message, Crash):
            raise message.error
        await handle(message)

    actor.handle = handle_or_crash  # type: ignore[method-assign]


class Actor:
    """What a supervisor runs: a named loop, restarted with its state after a crash."""

    name: str
    metrics: Metrics = UNCOUNTED  # the service's, given by the supervisor that starts it
    tick_interval: float | None = None  # when set, `tick` runs that often
    # Told of an inline actor's crashes (the supervisor's policy counts them).
    on_inline_crash: Callable[[Actor], None] | None = None

    @property
    def inline(self) -> bool:
        """Runs in its senders' tasks (see `Inline`)."""
        return False

    async def run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """The actor will not run again (escalated): nobody may wait on it."""


class MessageActor(Actor):
    """An actor that handles messages one at a time, in the order sent, in `handle`.
    `mailbox_size` None: inline (see `Inline`); else a mailbox of that many messages."""

    # An inline actor whose handling may wait handles its queue shielded: a sender's
    # cancellation must not cut a message in half (a mailbox actor's own task is never
    # cancelled by its senders either). Shielding costs a cancel scope per message.
    inline_may_wait = True

    def __init__(self, name: str, mailbox_size: int | None) -> None:
        self.name = name
        self._runner: Mailbox | Inline = (
            Inline(self) if mailbox_size is None else Mailbox(self, mailbox_size)
        )

    @property
    def inline(self) -> bool:
        return isinstance(self._runner, Inline)

    async def send(self, message: Any) -> None:
        await self._runner.send(message)

    async def tell(self, message: Any) -> None:
        """Send without ever waiting for room in a mailbox: queued at once (a mailbox
        actor), or handled now in this task (an inline one, which never waits)."""
        runner = self._runner
        if isinstance(runner, Mailbox):
            runner.post(message)
        else:
            await runner.send(message)

    async def call(self, message_with_reply: Any) -> Any:
        """Send a message carrying a `reply` slot and wait for the answer."""
        await self._runner.send(message_with_reply)
        return await message_with_reply.reply.wait()

    def stop(self) -> None:
        """The actor will not run again: senders get BrokenResourceError, not a hang."""
        self._runner.stop()

    def close_mailbox(self) -> None:
        """No new messages; the loop ends once it has handled those already queued."""
        self._runner.close()

    def mailbox_empty(self) -> bool:
        return self._runner.empty()

    async def run(self) -> None:
        """The actor's loop; a supervisor calls it again after a crash, state intact."""
        await self._runner.run()

    # what an actor defines -----------------------------------------------------------

    async def handle(self, message: Any) -> None:
        raise NotImplementedError

    async def recover(self) -> None:
        """After a crash, before the next message (a room finishes its fan-out)."""

    async def idle(self) -> None:
        """Runs before the loop takes its next message (a room flushes here)."""

    async def tick(self) -> None:
        """Periodic work of an actor that sets `tick_interval`."""

    def deadline(self) -> float:
        """When the actor has something to do with no message (inf: never); read
        before each wait for a message (an inline actor's only if it has a tick: its
        `run` wakes for it)."""
        return math.inf

    async def at_deadline(self) -> None:
        """What it does once `deadline` has passed."""

    def on_crash(self, message: Any) -> None:
        """The message being handled crashed the actor: by default its caller is told."""
        reply = getattr(message, "reply", None)
        if reply is not None:
            reply.fail(ActorCrashed(f"{self.name} crashed"))


class Mailbox:
    """A Trio memory channel read by a loop in the actor's own task. `send` waits
    while `size` messages are queued (back-pressure on publishers); `post` never waits
    (the registry's joins and leaves: at most one in flight per connection, so bounded
    by the connections; the registry, which handles its messages shielded, must never
    wait on a room that may be full)."""

    __slots__ = ("_actor", "_inbox", "_mailbox", "_size", "_space", "_stopped")

    def __init__(self, actor: MessageActor, size: int) -> None:
        self._actor = actor
        self._size = size
        self._mailbox, self._inbox = trio.open_memory_channel[Any](math.inf)
        self._space = trio.lowlevel.ParkingLot()  # senders waiting for room in the queue
        self._stopped = False

    async def send(self, message: Any) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._stopped and self._inbox.statistics().current_buffer_used >= self._size:
            await self._space.park()  # the loop unparks one sender per message it takes
        self._mailbox.send_nowait(message)  # closed or stopped: raises, as a channel does
        await trio.lowlevel.cancel_shielded_checkpoint()

    def post(self, message: Any) -> None:
        self._mailbox.send_nowait(message)

    def stop(self) -> None:
        self._stopped = True
        self._inbox.close()
        self._space.unpark_all()

    def close(self) -> None:
        self._mailbox.close()

    def empty(self) -> bool:
        return not self._inbox.statistics().current_buffer_used

    async def run(self) -> None:
        actor = self._actor
        next_tick = trio.current_time() + (actor.tick_interval or math.inf)
        while True:
            message: Any = None
            try:
                await actor.idle()
                wake = min(next_tick, actor.deadline())
                if wake == math.inf:
                    message = await self._inbox.receive()
                else:
                    with trio.move_on_at(wake):
                        message = await self._inbox.receive()
            except trio.EndOfChannel:
                return
            if message is not None and self._space.statistics().tasks_waiting:
                self._space.unpark()
            now = trio.current_time()
            if actor.tick_interval is not None and now >= next_tick:
                next_tick = now + actor.tick_interval
                await actor.tick()
            if now >= actor.deadline():
                await actor.at_deadline()
            if message is None:
                continue
            try:
                await actor.handle(message)
            except BaseException:
                actor.on_crash(message)
                raise


class Inline:
    """No task and no channel: a message is handled in the sender's task, one at a
    time, in the order sent (a message sent while another is being handled waits in a
    list, and the task handling that one handles it next). For actors whose handling
    rarely waits. A crash is reported to the supervisor, which counts it like a
    restart; the state stays, as after a restart. Its `run` (only for an actor with a
    tick) queues the ticks in turn with the messages."""

    __slots__ = ("_actor", "_busy", "_closed", "_queue", "_stopped")

    def __init__(self, actor: MessageActor) -> None:
        self._actor = actor
        # A list: it is nearly always empty, and an empty deque costs ten times the memory.
        self._queue: list[Any] = []
        self._busy = False  # a task is handling the queue
        self._closed = False  # no new messages
        self._stopped = False  # no message handled any more

    def stop(self) -> None:
        self._closed = self._stopped = True

    def close(self) -> None:
        self._closed = True

    def empty(self) -> bool:
        return not self._queue

    async def run(self) -> None:
        actor = self._actor
        interval = actor.tick_interval
        assert interval is not None
        next_tick = trio.current_time() + interval
        while True:
            # The deadline is read again at every tick: one that comes earlier than the
            # next tick must be set before it (the registry's: frames kept after now
            # expire `history_ttl` later, a tick or more away).
            await trio.sleep_until(min(next_tick, actor.deadline()))
            now = trio.current_time()
            if now >= next_tick:
                next_tick = now + interval
                await self.send(_TICK)
            if now >= actor.deadline():
                await self.send(_DEADLINE)

    async def send(self, message: Any) -> None:
        if self._stopped:
            raise trio.BrokenResourceError(f"{self._actor.name} has stopped")
        if self._closed:
            raise trio.ClosedResourceError(f"{self._actor.name} takes no more messages")
        queue = self._queue
        queue.append(message)
        if self._busy:
            return  # a message is being handled: its task handles this one after it
        self._busy = True
        try:
            if self._actor.inline_may_wait:
                with trio.CancelScope(shield=True):
                    await self._handle_queue(queue)
            else:
                await self._handle_queue(queue)
        finally:
            self._busy = False

    async def _handle_queue(self, queue: list[Any]) -> None:
        actor = self._actor
        while queue:
            message = queue.pop(0)
            if self._stopped and message is not _RECOVER:
                MessageActor.on_crash(actor, message)  # escalated: answered, not handled
                continue
            try:
                if message is _RECOVER:
                    await actor.recover()
                    continue
                if message is _TICK:
                    await actor.tick()
                    continue
                if message is _DEADLINE:
                    await actor.at_deadline()
                    continue
                await actor.handle(message)
            except Exception:
                actor.on_crash(message)
                queue.insert(0, _RECOVER)  # as a restarted loop would, first thing
                if actor.on_inline_crash is None:
                    log.exception("actor crashed: %s", actor.name)
                else:
                    actor.on_inline_crash(actor)  # may escalate: stops the actor
