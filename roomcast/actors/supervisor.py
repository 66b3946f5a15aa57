"""Supervision, in the manner of OTP's one_for_one: a crashed actor is restarted with
its state intact; more than `intensity` restarts within `period` seconds escalate."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import trio

from roomcast.actors.base import Actor, MailboxActor
from roomcast.metrics import UNCOUNTED, Metrics

log = logging.getLogger(__name__)


class Escalation(Exception):
    """An actor crashed more often than the restart policy allows."""


def _no_handler(failure: Escalation) -> None:
    raise failure


class Supervisor:
    def __init__(
        self,
        nursery: trio.Nursery,
        intensity: int = 10,
        period: float = 5.0,
        on_escalation: Callable[[Escalation], None] = _no_handler,
        metrics: Metrics = UNCOUNTED,
    ) -> None:
        self._nursery = nursery
        self._on_escalation = on_escalation
        self.metrics = metrics
        self.intensity = intensity
        self.period = period
        self.restarts = 0
        self._recent: deque[float] = deque()

    def start(self, actor: Actor) -> None:
        """Run `actor` in the supervised nursery; synchronous, so a caller can start
        an actor and send to it without a checkpoint in between."""
        actor.metrics = self.metrics  # every actor of the service counts in one place
        if actor.inline:  # it runs in its senders' tasks, and reports its crashes
            actor.on_inline_crash = self._inline_crashed
            if actor.tick_interval is None:
                return  # no task at all
        self._nursery.start_soon(self._supervise, actor, name=actor.name)

    def _inline_crashed(self, actor: MailboxActor) -> None:
        """An inline actor crashed (called in its except block): the same policy."""
        log.exception("actor crashed: %s", actor.name)
        if self._too_many_restarts(actor):
            actor.stop()  # not restarted: its senders are told, none left waiting
            self._on_escalation(Escalation(f"{actor.name} restarted too often"))
            return
        self.metrics.restarted(actor.name)

    async def _supervise(self, actor: Actor) -> None:
        while True:
            try:
                await actor.run()
                return
            except Exception:
                log.exception("actor crashed: %s", actor.name)
                if self._too_many_restarts(actor):
                    # Not restarted: the service stops cleanly instead of limping on.
                    self._on_escalation(Escalation(f"{actor.name} restarted too often"))
                    return
                log.info("restarting %s with its state", actor.name)
                self.metrics.restarted(actor.name)

    def _too_many_restarts(self, actor: Actor) -> bool:
        now = trio.current_time()
        self._recent.append(now)
        while self._recent and self._recent[0] < now - self.period:
            self._recent.popleft()
        self.restarts += 1
        if len(self._recent) > self.intensity:
            log.critical(
                "actor %s: %d restarts within %.1f s; escalating",
                actor.name, len(self._recent), self.period,
            )
            return True
        return False
