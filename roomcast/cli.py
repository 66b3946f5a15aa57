"""The `roomcast` command: `serve` runs the service, `token` mints a token to try it,
`notify` sends a notification to a running cluster (Redis) or node (its HTTP API)."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import attrs
import httpx
import trio

from roomcast.actors.streams import BackplaneUnavailable
from roomcast.auth import Authenticator, ConfigError, JwtAuthenticator, mint_token
from roomcast.config import Config
from roomcast.node import open_service
from roomcast.protocol import NotificationLevel
from roomcast.remote import RemoteNotificationService
from roomcast.service import CannotListen, ServiceFailed
from roomcast.tls import TlsUnavailable, server_context
from roomcast.workers import WorkersFailed, stop_when_orphaned, supervise, worker_index

log = logging.getLogger("roomcast")


def _add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                      names: Sequence[str] | None = None) -> None:
    """One flag per Config field (or per field in `names`); unset flags fall back to
    ROOMCAST_* and defaults."""
    for field in attrs.fields(Config):
        if names is not None and field.name not in names:
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata['help']} (env ROOMCAST_{field.name.upper()})"
        if field.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
            continue
        # A field with a converter reads text itself (`--workers auto`).
        kind: Any = str if field.converter else {"int": int, "float": float}.get(
            str(field.type), str)
        parser.add_argument(flag, type=kind, default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roomcast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the WebSocket service")
    _add_config_flags(serve)
    token = commands.add_parser("token", help="mint a token signed with the configured secret")
    token.add_argument("--user", required=True, help="user id (the token's subject)")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    token.add_argument("--scope", default=None, help="space-separated scopes, e.g. "
                       "roomcast:broadcast")
    _add_config_flags(token)
    notify = commands.add_parser(
        "notify", help="send a notification to a running cluster through Redis, or to "
        "one node through its HTTP API",
        description="Send a notification: to a cluster through its Redis (--redis-url), "
        "or to one node through its HTTP API (--api-url and --api-key). Exactly one.",
    )
    cluster = notify.add_argument_group("a cluster, through Redis")
    _add_config_flags(cluster, _NOTIFY_REDIS_SETTINGS)
    node = notify.add_argument_group("one node, through its HTTP API")
    node.add_argument("--api-url", default=None, help="the node's HTTP port, e.g. "
                      f"http://127.0.0.1:8080 (env {_API_URL_ENV})")
    node.add_argument("--api-key", default=None, help="the node's api_key (better: env "
                      "ROOMCAST_API_KEY, which no process listing shows)")
    target = notify.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", help="notify this user's connections")
    target.add_argument("--room", help="notify every connection in this room")
    target.add_argument("--broadcast", action="store_true", help="notify every connection")
    notify.add_argument("--message", required=True, help="the notification's text")
    notify.add_argument("--level", default="info", choices=[lv.value for lv in NotificationLevel])
    notify.add_argument("--data", type=json.loads, default=None, help="extra data, a JSON object")
    return parser


_NOTIFY_REDIS_SETTINGS = ("redis_url", "redis_sharded", "redis_prefix")
_API_URL_ENV = "ROOMCAST_API_URL"
_NOTIFY_TIMEOUT = 10.0  # seconds for the HTTP API's answer


class _NotifyUsage(Exception):
    """`roomcast notify` given no way, or two ways, to reach the service."""


def _notify_way(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(redis_url, api_url): exactly one set. Flags first; the environment
    (ROOMCAST_REDIS_URL, ROOMCAST_API_URL) only when no flag names a way."""
    redis_url, api_url = args.redis_url, args.api_url
    if redis_url is None and api_url is None:
        redis_url = os.environ.get("ROOMCAST_REDIS_URL") or None
        api_url = os.environ.get(_API_URL_ENV) or None
    if redis_url and api_url:
        raise _NotifyUsage("give one way to reach the service, not both: --redis-url "
                           "(a cluster) or --api-url (one node)")
    if not redis_url and not api_url:
        raise _NotifyUsage("say how to reach the service: --redis-url (a cluster, "
                           f"or ROOMCAST_REDIS_URL) or --api-url (one node, or {_API_URL_ENV})")
    return redis_url, api_url


def _notify(args: argparse.Namespace) -> int:
    try:
        redis_url, api_url = _notify_way(args)
        if api_url:
            return _notify_over_http(api_url, args)
        flags = {name: getattr(args, name) for name in _NOTIFY_REDIS_SETTINGS}
        config = Config.from_sources({**flags, "redis_url": redis_url})
    except _NotifyUsage as exc:
        print(f"roomcast notify: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        print(f"roomcast notify: bad setting: {exc}", file=sys.stderr)
        return 2
    remote = RemoteNotificationService.from_config(config)
    common = {"message": args.message, "level": args.level, "data": args.data}
    try:
        if args.user is not None:
            result: Any = trio.run(partial(remote.notify_user, args.user, **common))
        elif args.room is not None:
            result = trio.run(partial(remote.notify_room, args.room, **common))
        else:
            result = trio.run(partial(remote.broadcast, **common))
    except (BackplaneUnavailable, ValueError, TypeError) as exc:
        print(f"roomcast notify: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def _notify_over_http(api_url: str, args: argparse.Namespace) -> int:
    """POST /api/v1/notifications to one node; prints what the facade would return."""
    if not api_url.startswith(("http://", "https://")):
        raise _NotifyUsage(f"--api-url is the node's HTTP port, http://HOST:PORT, not {api_url!r}")
    key = args.api_key or os.environ.get("ROOMCAST_API_KEY")
    if not key:
        raise _NotifyUsage("--api-url needs the node's API key: --api-key or ROOMCAST_API_KEY")
    body: dict[str, Any] = {"message": args.message, "level": args.level}
    if args.data is not None:
        body["data"] = args.data
    if args.user is not None:
        body["user_id"] = args.user
    elif args.room is not None:
        body["room"] = args.room
    else:
        body["broadcast"] = True
    url = api_url.rstrip("/") + "/api/v1/notifications"
    try:
        response = httpx.post(url, json=body, timeout=_NOTIFY_TIMEOUT,
                              headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        print(f"roomcast notify: {url} unreachable: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if not response.is_success or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        hint = " (a 404 here: the node has no api_key, so no API)" if (
            response.status_code == 404) else ""
        print(f"roomcast notify: the node answered {response.status_code}: "
              f"{error or response.reason_phrase}{hint}", file=sys.stderr)
        return 1
    print(json.dumps(answer.get("delivered", answer.get("users"))))
    return 0


def config_from(args: argparse.Namespace) -> Config:
    names = {f.name for f in attrs.fields(Config)}
    return Config.from_sources({k: v for k, v in vars(args).items() if k in names})


async def _serve_until_signalled(config: Config, authenticator: Authenticator) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            service = await nursery.start(_run, config, authenticator)
            if worker_index() is not None:
                nursery.start_soon(stop_when_orphaned, nursery.cancel_scope)
            print(f"roomcast listening on {service.url}", flush=True)
            if service.http_port is not None:
                scheme = "http" if config.tls_cert is None else "https"
                http = f"{scheme}://{config.host}:{service.http_port}/"
                print(f"Demo page: open {http} in a browser" if config.demo else
                      f"HTTP (health, metrics, API) on {http}", flush=True)
            async for signum in signals:
                log.info("%s received: closing every connection", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


async def _run(
    config: Config, authenticator: Authenticator, task_status: trio.TaskStatus[Any]
) -> None:
    async with open_service(config, authenticator=authenticator) as service:
        task_status.started(service)
        await trio.sleep_forever()


def main(argv: Sequence[str] | None = None) -> int:
    """The `roomcast` command; without `argv`, the process's own, and it then readies
    the process to exit at once."""
    code = _command(list(sys.argv[1:] if argv is None else argv))
    if argv is None:
        _exit_soon()
    return code


def _exit_soon() -> None:
    """The interpreter's teardown runs full garbage collections over every object the
    imports made (~95,000): measured, 0.9-1.3 s between `roomcast stopped` and the end
    of the process after a SIGTERM. Frozen, those objects are skipped; the process is
    ending, so nothing is lost (atexit handlers and stream flushes still run)."""
    gc.freeze()


def _command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from(args)
    except (ValueError, TypeError) as exc:
        print(f"roomcast: bad setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # coredis logs each reconnect attempt at INFO: an outage is one line of ours
        # (the backplane's), not one of theirs per retry.
        logging.getLogger("coredis").setLevel(logging.WARNING)
    try:
        if args.command == "token":
            print(mint_token(config, args.user, ttl=args.ttl, scope=args.scope))
        elif args.command == "notify":
            return _notify(args)
        else:
            # Built first, so that a bad key setup is refused before binding anything.
            authenticator = JwtAuthenticator(config)
            server_context(config)  # likewise an unreadable certificate or key (exit 1)
            if config.workers > 1 and worker_index() is None:
                return _run_workers(config, argv)
            return _run_service(config, authenticator)
    except ConfigError as exc:
        print(f"roomcast: {exc}", file=sys.stderr)
        return 2
    except TlsUnavailable as exc:
        print(f"roomcast: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_service(config: Config, authenticator: Authenticator) -> int:
    failed = False
    try:
        trio.run(_serve_until_signalled, config, authenticator)
    except* ServiceFailed:
        failed = True  # already logged, with its cause, by the service
    except* CannotListen as group:
        _say_cannot_listen(group)
        failed = True
    return 1 if failed else 0


def _run_workers(config: Config, argv: Sequence[str]) -> int:
    if not config.redis_url:
        print(f"roomcast: --workers {config.workers} needs --redis-url (or "
              "ROOMCAST_REDIS_URL): each worker is a node of the cluster on that Redis",
              file=sys.stderr)
        return 2
    try:
        trio.run(supervise, config, argv)
    except CannotListen as error:
        print(f"roomcast: {error.strerror}", file=sys.stderr)
        return 1
    except WorkersFailed as error:
        print(f"roomcast: {error}", file=sys.stderr)
        return 1
    return 0


def _say_cannot_listen(group: BaseExceptionGroup[CannotListen]) -> None:
    first = next(_leaves(group))
    assert isinstance(first, CannotListen)
    print(f"roomcast: {first.strerror}", file=sys.stderr)


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


if __name__ == "__main__":
    sys.exit(main())
