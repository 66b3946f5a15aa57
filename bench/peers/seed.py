"""The seed's design, written fresh from its description
(shared/seed/websocket-feature.md): FastAPI on uvicorn, a JWT checked in the WebSocket
endpoint with pyjwt (HTTP 403 when refused), a dict from user id to socket, rooms as
sets of user ids with a personal room `user_{id}` for everyone, and a room message
sent by a sequential `await ws.send_text(text)` per member, the JSON encoded once.

    python bench/peers/seed.py --secret S [--cpu 0]

Uvicorn runs with its defaults (h11, websockets-sansio, the asyncio loop) on a socket
bound by peer_common.serve_uvicorn, so that the port can be 0; the control channel is
there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import jwt
from fastapi import FastAPI, Query, WebSocket, WebSocketDisconnect, status
from peer_common import (
    PATH,
    AsyncioBackend,
    compact,
    parse_args,
    room_payload,
    serve_uvicorn,
    setup_process,
    user_id_of,
    user_payload,
)


class ConnectionManager:
    """The seed's manager: one socket per user, rooms as sets of user ids."""

    def __init__(self) -> None:
        self.active_connections: dict[int, WebSocket] = {}
        self.rooms: dict[str, set[int]] = {}
        self.user_rooms: dict[int, set[str]] = {}  # so a disconnect costs its rooms only

    async def connect(self, websocket: WebSocket, user_id: int) -> None:
        await websocket.accept()
        self.active_connections[user_id] = websocket
        self.join_room(user_id, f"user_{user_id}")

    def disconnect(self, user_id: int) -> None:
        self.active_connections.pop(user_id, None)
        for room in self.user_rooms.pop(user_id, ()):
            self._discard(user_id, room)

    def join_room(self, user_id: int, room: str) -> None:
        self.rooms.setdefault(room, set()).add(user_id)
        self.user_rooms.setdefault(user_id, set()).add(room)

    def leave_room(self, user_id: int, room: str) -> None:
        self._discard(user_id, room)
        self.user_rooms.get(user_id, set()).discard(room)

    def _discard(self, user_id: int, room: str) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.discard(user_id)
            if not members:
                del self.rooms[room]

    async def send_personal_message(self, text: str, user_id: int) -> bool:
        websocket = self.active_connections.get(user_id)
        if websocket is None:
            return False
        await websocket.send_text(text)
        return True

    async def send_to_room(self, text: str, room: str) -> int:
        sent = 0
        for user_id in list(self.rooms.get(room, ())):
            websocket = self.active_connections.get(user_id)
            if websocket is None:
                continue
            try:
                await websocket.send_text(text)
                sent += 1
            except Exception:
                self.disconnect(user_id)
        return sent


def build_app(secret: str, manager: ConnectionManager) -> FastAPI:
    app = FastAPI()

    @app.websocket(PATH)
    async def websocket_endpoint(websocket: WebSocket, token: str | None = Query(None)) -> None:
        try:
            user_id = user_id_of(jwt.decode(token or "", secret, algorithms=["HS256"]))
        except (jwt.PyJWTError, KeyError, ValueError):
            await websocket.close(code=status.WS_1008_POLICY_VIOLATION)  # HTTP 403
            return
        await manager.connect(websocket, user_id)
        await websocket.send_text(json.dumps({
            "type": "info",
            "message": f"Connected successfully. You are in room: user_{user_id}",
            "data": {"user_id": user_id, "rooms": [f"user_{user_id}"]},
        }))
        try:
            while True:
                message = json.loads(await websocket.receive_text())
                kind, room = message.get("type"), message.get("room")
                if kind == "join_room" and room:
                    manager.join_room(user_id, room)
                    await websocket.send_text(json.dumps(
                        {"type": "info", "message": f"Joined room: {room}", "room": room}
                    ))
                elif kind == "leave_room" and room:
                    manager.leave_room(user_id, room)
                    await websocket.send_text(json.dumps(
                        {"type": "info", "message": f"Left room: {room}", "room": room}
                    ))
        except WebSocketDisconnect:
            pass
        finally:
            manager.disconnect(user_id)

    return app


class SeedBackend(AsyncioBackend):
    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager

    def connections(self) -> int:
        return len(self.manager.active_connections)

    async def publish_room(self, room: str, key: str, seq: int, pad: str) -> None:
        await self.manager.send_to_room(compact(room_payload(room, key, seq, pad)), room)

    async def notify_user(self, user: int, seq: int) -> None:
        await self.manager.send_personal_message(compact(user_payload(seq)), user)


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    setup_process(args.cpu)
    manager = ConnectionManager()
    await serve_uvicorn(build_app(args.secret, manager), SeedBackend(manager))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
