"""python-socketio's `AsyncServer` on uvicorn: the JWT is checked in `connect` (from
the client's `auth` payload; refused with `ConnectionRefusedError`), everyone enters a
personal room `user_{id}`, clients join rooms with a `join_room` event (acknowledged),
and a room message is one `await sio.emit("notification", payload, room=R)`.

    python bench/peers/socketio_peer.py --secret S [--cpu 0]

Everything else at python-socketio's defaults (engine.io pings every 25 s); uvicorn at
its defaults, as for the seed's design.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import jwt
import socketio
from peer_common import (
    AsyncioBackend,
    parse_args,
    room_payload,
    serve_uvicorn,
    setup_process,
    user_id_of,
    user_payload,
)


def build_server(secret: str, users: dict[str, int]) -> socketio.AsyncServer:
    sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        token = auth.get("token", "") if isinstance(auth, dict) else ""
        try:
            user_id = user_id_of(jwt.decode(token, secret, algorithms=["HS256"]))
        except (jwt.PyJWTError, KeyError, ValueError):
            raise socketio.exceptions.ConnectionRefusedError("invalid token") from None
        users[sid] = user_id
        await sio.enter_room(sid, f"user_{user_id}")

    @sio.event
    async def disconnect(sid: str, *reason: Any) -> None:
        users.pop(sid, None)

    @sio.on("join_room")
    async def join_room(sid: str, room: Any) -> dict[str, Any]:
        await sio.enter_room(sid, str(room))
        return {"message": f"Joined room: {room}", "room": room}

    return sio


class SocketioBackend(AsyncioBackend):
    def __init__(self, sio: socketio.AsyncServer, users: dict[str, int]) -> None:
        self.sio = sio
        self.users = users

    def connections(self) -> int:
        return len(self.users)

    async def publish_room(self, room: str, key: str, seq: int, pad: str) -> None:
        await self.sio.emit("notification", room_payload(room, key, seq, pad), room=room)

    async def notify_user(self, user: int, seq: int) -> None:
        await self.sio.emit("notification", user_payload(seq), room=f"user_{user}")


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    setup_process(args.cpu)
    users: dict[str, int] = {}
    sio = build_server(args.secret, users)
    await serve_uvicorn(socketio.ASGIApp(sio), SocketioBackend(sio, users))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
