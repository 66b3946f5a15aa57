"""The process's descriptor limit, checked against the settings at startup.

Every socket is a file descriptor: each authenticated connection, each pending
handshake, and a few more (the listeners, the HTTP port's clients, Redis, log files).
Many systems start a process with a soft `RLIMIT_NOFILE` of 1,024 and a hard one far
above it; past the soft one, accept() fails with EMFILE and nobody new gets in. So at
startup the soft limit is raised to the hard one, and a warning says when the settings
still cannot fit under it.
"""

from __future__ import annotations

import logging
import sys

from roomcast.config import Config

log = logging.getLogger(__name__)

DESCRIPTOR_MARGIN = 64
"""Descriptors kept for what is not a client socket: listeners, Redis, logs, the loop."""


def descriptors_needed(config: Config) -> int:
    """Descriptors the settings may use at once."""
    http_clients = config.http_max_requests if config.http_port != -1 else 0
    return config.max_connections + config.max_handshakes + http_clients + DESCRIPTOR_MARGIN


def raised_soft_limit(soft: int, hard: int, infinity: int) -> int:
    """The soft limit to ask for: the hard one. An unlimited hard limit is not a value
    that setrlimit takes for descriptors (Linux caps them at fs.nr_open): keep the soft
    one then, unless it is lower than 2**20 (Linux's default nr_open), which is asked for."""
    if hard == infinity:
        return max(soft, 1 << 20) if soft != infinity else soft
    return max(soft, hard)


def fit_descriptors(config: Config) -> int | None:
    """Raise the soft descriptor limit to the hard one and warn when the settings do not
    fit under it. The limit now in force, or None where there is no such limit (Windows)."""
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = raised_soft_limit(soft, hard, resource.RLIM_INFINITY)
    if wanted != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.info("could not raise the descriptor limit from %d to %d: %s", soft, wanted,
                     exc)
    warn_if_too_low(config, soft, resource.RLIM_INFINITY)
    return soft


def warn_if_too_low(config: Config, limit: int, infinity: int = -1) -> bool:
    """Warn (and True) when `limit` descriptors cannot hold what the settings allow."""
    needed = descriptors_needed(config)
    if limit == infinity or limit >= needed:
        return False
    log.warning(
        "the descriptor limit (%d, ulimit -n) is below what the settings may use: "
        "max_connections %d + max_handshakes %d + about %d for the HTTP port and the "
        "rest = %d; past it new sockets fail. Raise the hard limit (ulimit -Hn, systemd "
        "LimitNOFILE) or lower max_connections", limit, config.max_connections,
        config.max_handshakes, needed - config.max_connections - config.max_handshakes,
        needed,
    )
    return True
