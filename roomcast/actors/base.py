"""What every mailbox actor shares: a bounded mailbox, a loop, and replies."""

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
    """Fault injection: the actor raises `error` when it handles this message."""

    error: BaseException
    reply: Reply[Any] | None = None


class Actor:
    """What a supervisor runs: a named loop, restarted with its state after a crash."""

    name: str
    metrics: Metrics = UNCOUNTED  # the service's, given by the supervisor that starts it
    tick_interval: float | None = None  # when set, `tick` runs that often
    # Told of an inline actor's crashes (the supervisor's policy counts them).
    on_inline_crash: Callable[[MailboxActor], None] | None = None

    @property
    def inline(self) -> bool:  # see MailboxActor
        return False

    async def run(self) -> None:
        raise NotImplementedError


class MailboxActor(Actor):
    """An actor reached only through its bounded mailbox; `handle` runs one message.

    An inline actor (`inline=True`) has no task and no mailbox: a message is handled in
    the sender's task, one at a time, in the order sent (a message sent while another
    is being handled waits in a queue, and the task handling that one handles it next).
    For actors whose `handle` does not wait (a user's personal room): it saves the
    task, the mailbox and two task switches per message. A crash is reported to the
    supervisor, which counts it like a restart; the state stays, as after a restart.
    """

    # An inline actor whose handling may wait handles its queue shielded: a sender's
    # cancellation must not cut a message in half (a mailbox actor's own task is never
    # cancelled by its senders either). Shielding costs a cancel scope per message.
    inline_may_wait = True

    def __init__(self, name: str, mailbox_size: int, *, inline: bool = False) -> None:
        self.name = name
        # Inline: the messages waiting to be handled (a list: it is nearly always empty,
        # and an empty deque costs ten times the memory).
        self._queue: list[Any] | None = [] if inline else None
        self._busy = False  # inline: a task is handling the queue
        self._closed = False  # inline: no new messages
        self._stopped = False  # inline: no message handled any more
        if not inline:
            self._mailbox, self._inbox = trio.open_memory_channel[Any](mailbox_size)

    @property
    def inline(self) -> bool:
        return self._queue is not None

    async def send(self, message: Any) -> None:
        if self._queue is None:
            await self._mailbox.send(message)
        else:
            await self._handle_inline(message)

    async def call(self, message_with_reply: Any) -> Any:
        """Send a message carrying a `reply` slot and wait for the answer."""
        await self.send(message_with_reply)
        return await message_with_reply.reply.wait()

    def stop(self) -> None:
        """The actor will not run again: senders get BrokenResourceError, not a hang."""
        if self._queue is None:
            self._inbox.close()
        self._closed = self._stopped = True

    def close_mailbox(self) -> None:
        """No new messages; the loop ends once it has handled those already queued."""
        if self._queue is None:
            self._mailbox.close()
        self._closed = True

    async def _handle_inline(self, message: Any) -> None:
        queue = self._queue
        assert queue is not None
        if self._stopped:
            raise trio.BrokenResourceError(f"{self.name} has stopped")
        if self._closed:
            raise trio.ClosedResourceError(f"{self.name} takes no more messages")
        queue.append(message)
        if self._busy:
            return  # a message is being handled: its task handles this one after it
        self._busy = True
        try:
            if self.inline_may_wait:
                with trio.CancelScope(shield=True):
                    await self._handle_queue(queue)
            else:
                await self._handle_queue(queue)
        finally:
            self._busy = False

    async def _handle_queue(self, queue: list[Any]) -> None:
        while queue:
            message = queue.pop(0)
            if self._stopped and message is not _RECOVER:
                MailboxActor.on_crash(self, message)  # escalated: answered, not handled
                continue
            try:
                if message is _RECOVER:
                    await self.recover()
                    continue
                if message is _TICK:
                    await self.tick()
                    continue
                if isinstance(message, Crash):
                    raise message.error
                await self.handle(message)
            except Exception:
                self.on_crash(message)
                queue.insert(0, _RECOVER)  # as a restarted loop would, first thing
                if self.on_inline_crash is None:
                    log.exception("actor crashed: %s", self.name)
                else:
                    self.on_inline_crash(self)  # may escalate: stops the actor

    async def run(self) -> None:
        """The actor's loop; a supervisor calls it again after a crash, state intact.
        An inline actor's loop only ticks (its ticks queue up with its messages)."""
        if self.inline:
            assert self.tick_interval is not None
            while True:
                await trio.sleep(self.tick_interval)
                await self.send(_TICK)
        next_tick = trio.current_time() + (self.tick_interval or math.inf)
        while True:
            message: Any = None
            try:
                await self.idle()
                wake = min(next_tick, self.deadline())
                if wake == math.inf:
                    message = await self._inbox.receive()
                else:
                    with trio.move_on_at(wake):
                        message = await self._inbox.receive()
            except trio.EndOfChannel:
                return
            now = trio.current_time()
            if self.tick_interval is not None and now >= next_tick:
                next_tick = now + self.tick_interval
                await self.tick()
            if now >= self.deadline():
                await self.at_deadline()
            if message is None:
                continue
            try:
                if isinstance(message, Crash):
                    raise message.error
                await self.handle(message)
            except BaseException:
                self.on_crash(message)
                raise

    async def handle(self, message: Any) -> None:
        raise NotImplementedError

    async def recover(self) -> None:
        """After a crash, before the next message (a room finishes its fan-out)."""

    async def idle(self) -> None:
        """Runs before the loop takes its next message (a room flushes here)."""

    def mailbox_empty(self) -> bool:
        if self._queue is not None:
            return not self._queue
        return not self._inbox.statistics().current_buffer_used

    async def tick(self) -> None:
        """Periodic work of an actor that sets `tick_interval`."""

    def deadline(self) -> float:
        """When the actor has something to do with no message (inf: never); read
        before each wait for a message. Not for inline actors."""
        return math.inf

    async def at_deadline(self) -> None:
        """What it does once `deadline` has passed."""

    def on_crash(self, message: Any) -> None:
        """The message being handled crashed the actor: by default its caller is told."""
        reply = getattr(message, "reply", None)
        if reply is not None:
            reply.fail(ActorCrashed(f"{self.name} crashed"))
