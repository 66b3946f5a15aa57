"""A plain `websockets` (asyncio) server, the fastest plain-Python reference: the JWT
is checked in `process_request` (HTTP 403 when refused), a dict from user id to
connection, rooms as sets of connections, and a room message is one
`websockets.broadcast(members, text)` (synchronous; the publisher then yields once,
as an awaited facade call would).

    python bench/peers/websockets_peer.py --secret S [--cpu 0]

Everything else at the library's defaults (pings every 20 s; no compression, since the
load generator offers none).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import jwt
from peer_common import (
    PATH,
    AsyncioBackend,
    announce,
    compact,
    parse_args,
    room_payload,
    serve_control,
    setup_process,
    user_id_of,
    user_payload,
)
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


class Rooms(AsyncioBackend):
    def __init__(self) -> None:
        self.users: dict[int, ServerConnection] = {}
        self.rooms: dict[str, set[ServerConnection]] = {}

    def connections(self) -> int:
        return len(self.users)

    async def publish_room(self, room: str, key: str, seq: int, pad: str) -> None:
        broadcast(self.rooms.get(room, ()), compact(room_payload(room, key, seq, pad)))
        await asyncio.sleep(0)

    async def notify_user(self, user: int, seq: int) -> None:
        connection = self.users.get(user)
        if connection is not None:
            with contextlib.suppress(ConnectionClosed):
                await connection.send(compact(user_payload(seq)))


def build_handlers(secret: str, state: Rooms):  # type: ignore[no-untyped-def]
    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        token = parse_qs(url.query).get("token", [""])[0]
        try:
            connection.user_id = user_id_of(  # type: ignore[attr-defined]
                jwt.decode(token, secret, algorithms=["HS256"])
            )
        except (jwt.PyJWTError, KeyError, ValueError):
            return connection.respond(HTTPStatus.FORBIDDEN, "invalid token\n")
        return None

    async def handler(connection: ServerConnection) -> None:
        user_id: int = connection.user_id  # type: ignore[attr-defined]
        personal = f"user_{user_id}"
        state.users[user_id] = connection
        joined = {personal}
        state.rooms.setdefault(personal, set()).add(connection)
        try:
            await connection.send(json.dumps({
                "type": "info",
                "message": f"Connected successfully. You are in room: {personal}",
                "data": {"user_id": user_id, "rooms": [personal]},
            }))
            async for text in connection:
                message = json.loads(text)
                room = message.get("room")
                if message.get("type") == "join_room" and room:
                    state.rooms.setdefault(room, set()).add(connection)
                    joined.add(room)
                    await connection.send(json.dumps(
                        {"type": "info", "message": f"Joined room: {room}", "room": room}
                    ))
        except ConnectionClosed:
            pass
        finally:
            if state.users.get(user_id) is connection:
                del state.users[user_id]
            for room in joined:
                members = state.rooms.get(room)
                if members is not None:
                    members.discard(connection)
                    if not members:
                        del state.rooms[room]

    return process_request, handler


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    setup_process(args.cpu)
    state = Rooms()
    process_request, handler = build_handlers(args.secret, state)
    stop = asyncio.Event()
    control = await serve_control(state, stop.set)
    async with serve(handler, "127.0.0.1", 0, process_request=process_request,
                     compression=None, backlog=4096) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        announce(port, control.sockets[0].getsockname()[1])
        await stop.wait()
    control.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
