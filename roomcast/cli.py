"""The `roomcast` command: `serve` runs the service, `token` mints a token to try it."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import attrs
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


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field; unset flags fall back to ROOMCAST_* and defaults."""
    for field in attrs.fields(Config):
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
        "notify", help="send a notification to a running cluster through Redis"
    )
    target = notify.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", help="notify this user's connections")
    target.add_argument("--room", help="notify every connection in this room")
    target.add_argument("--broadcast", action="store_true", help="notify every connection")
    notify.add_argument("--message", required=True, help="the notification's text")
    notify.add_argument("--level", default="info", choices=[lv.value for lv in NotificationLevel])
    notify.add_argument("--data", type=json.loads, default=None, help="extra data, a JSON object")
    _add_config_flags(notify)
    return parser


def _notify(config: Config, args: argparse.Namespace) -> int:
    if not config.redis_url:
        print("roomcast notify: set --redis-url or ROOMCAST_REDIS_URL", file=sys.stderr)
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
    argv = list(sys.argv[1:] if argv is None else argv)
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
            return _notify(config, args)
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
