"""The restart rule of a supervisor, in the manner of OTP: a child that dies is
restarted, unless that would make more than `intensity` restarts within `period`
seconds; then the supervisor gives up. Pure: the caller passes the clock's time."""

from __future__ import annotations

import attrs


@attrs.frozen
class RestartPolicy:
    """At most `intensity` restarts within any `period` seconds."""

    intensity: int = attrs.field(validator=attrs.validators.ge(0))
    period: float = attrs.field(validator=attrs.validators.gt(0))


@attrs.frozen
class Restarts:
    """The recent failures a supervisor counts against its policy."""

    policy: RestartPolicy
    recent: tuple[float, ...] = ()

    def after_failure(self, now: float) -> Restarts:
        """The count once a child died at `now`: failures older than the period forgotten."""
        kept = tuple(t for t in self.recent if t >= now - self.policy.period)
        return attrs.evolve(self, recent=(*kept, now))

    @property
    def exhausted(self) -> bool:
        """True when the last failure is one too many: do not restart, give up."""
        return len(self.recent) > self.policy.intensity
