"""The OpenAPI 3 document of the HTTP side, served at /openapi.json.

Written by hand next to the routes it describes (roomcast/http/app.py), and held to
them by tests/test_http_schema.py, which runs schemathesis against a live service:
every documented status, content type and body is checked, and every request the
schema forbids must be refused with a 4xx. The validation in app.py follows these
schemas exactly (no extra keys, the same patterns and bounds): the patterns and bounds
of room names and user ids come from roomcast.protocol.rules, which the validators use.
"""

from __future__ import annotations

from typing import Any

from roomcast.config import Config
from roomcast.protocol import NotificationLevel
from roomcast.protocol.rules import MAX_INT_USER_ID, ROOM_NAME_PATTERN, USER_ID_TEXT_PATTERN

MAX_TTL = 86400


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties,
            "additionalProperties": False}


_API_ERRORS = {
    "401": _error("no `Authorization: Bearer KEY` header, or a wrong key"),
    "404": _error("the API is disabled: the service has no `api_key`"),
}
_BODY_ERRORS = {
    "408": _error("the body did not arrive within `http_timeout` seconds"),
    "413": _error("a body (declared or sent) larger than `max_message_size`"),
}
_SECURED = {"security": [{"apiKey": []}], "tags": ["api"]}


def _text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _static(media_type: str, what: str) -> dict[str, Any]:
    return {"get": {"summary": what, "tags": ["static"], "responses": {
        "200": _text(media_type, what),
        "404": _error("the file is not installed"),
    }}}


_NOTIFICATION_FIELDS = {
    "message": {"type": "string", "description": "the notification's text"},
    "level": {"type": "string", "enum": [level.value for level in NotificationLevel],
              "default": "info"},
    "data": {"type": "object", "nullable": True,
             "description": "extra keys for the frame's `data` (`level` and "
                            "`notification` cannot be overridden)"},
}

SCHEMAS: dict[str, Any] = {
    "Error": _object(["error"], error={"type": "string"}),
    "UserId": {"anyOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_INT_USER_ID},
        {"type": "string", "pattern": USER_ID_TEXT_PATTERN},
    ], "description": "an integer, or a string; a string of digits names the same user as "
                      "that integer"},
    "RoomName": {"type": "string", "pattern": ROOM_NAME_PATTERN},
    "UserNotification": _object(["user_id", "message"], user_id=_ref("UserId"),
                                **_NOTIFICATION_FIELDS),
    "RoomNotification": _object(["room", "message"], room=_ref("RoomName"),
                                **_NOTIFICATION_FIELDS),
    "Broadcast": _object(["broadcast", "message"],
                         broadcast={"type": "boolean", "enum": [True]}, **_NOTIFICATION_FIELDS),
    "Delivered": _object(["delivered"], delivered={
        "type": "boolean", "description": "the user had a connection and the frame was queued"}),
    "Reached": _object(["users"], users={
        "type": "integer", "minimum": 0, "description": "distinct users reached"}),
    "Health": _object(["status"], status={"type": "string", "enum": ["ok"]}),
    "Readiness": _object(["ready", "reasons"], ready={"type": "boolean"}, reasons={
        "type": "array", "items": {"type": "string", "enum": ["draining", "redis_unavailable"]}}),
}

_PATHS: dict[str, Any] = {
    "/healthz": {"get": {"summary": "alive: 200 while the process runs", "tags": ["ops"],
                         "responses": {"200": _json(_ref("Health"), "alive")}}},
    "/readyz": {"get": {
        "summary": "ready for clients: 503 while draining, or while Redis is down in a cluster",
        "tags": ["ops"],
        "responses": {"200": _json(_ref("Readiness"), "ready"),
                      "503": _json(_ref("Readiness"), "not ready; `reasons` says why")}}},
    "/metrics": {"get": {"summary": "Prometheus metrics, text format", "tags": ["ops"],
                         "responses": {"200": _text("text/plain", "the metrics")}}},
    "/openapi.json": {"get": {"summary": "this document", "tags": ["ops"], "responses": {
        "200": _json({"type": "object"}, "the OpenAPI document")}}},
    "/api/v1/notifications": {"post": {
        "summary": "notify a user, a room, or everyone",
        "description": "The facade's `notify_user`, `notify_room` and `broadcast`: exactly "
                       "one of `user_id`, `room`, `broadcast: true`, with `message`, and "
                       "optionally `level` and `data`. Returns once the frame was handed to "
                       "every recipient's connection. With a backplane, 503 means it was "
                       "delivered on this node but the other nodes were not reached.",
        **_SECURED,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "oneOf": [_ref("UserNotification"), _ref("RoomNotification"), _ref("Broadcast")],
        }}}},
        "responses": {
            "200": _json({"oneOf": [_ref("Delivered"), _ref("Reached")]},
                         "`delivered` for a user; `users` reached for a room or a broadcast"),
            "400": _error("a body that is not strict JSON (at most 32 levels deep, no lone "
                          "surrogate) or not one of the three forms"),
            **_API_ERRORS,
            **_BODY_ERRORS,
            "503": _error("Redis is unreachable: delivered on this node only; or "
                          "`http_max_requests` requests are being served already"),
        }}},
    "/api/v1/users": {"get": {
        "summary": "the connected users (the facade's get_connected_users)", **_SECURED,
        "responses": {"200": _json(_object(["users"], users={
            "type": "array", "items": _ref("UserId")}), "every connected user"),
            **_API_ERRORS}}},
    "/api/v1/users/{user_id}": {"get": {
        "summary": "is this user connected (the facade's is_user_connected)", **_SECURED,
        "parameters": [{"name": "user_id", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": USER_ID_TEXT_PATTERN}}],
        "responses": {"200": _json(_object(["user_id", "connected"], user_id=_ref("UserId"),
                                           connected={"type": "boolean"}), "the answer"),
                      "400": _error("not a valid user id"), **_API_ERRORS}}},
    "/api/v1/rooms/{room}/members": {"get": {
        "summary": "the users with a connection in a room (the facade's get_room_members)",
        **_SECURED,
        "parameters": [{"name": "room", "in": "path", "required": True,
                        "schema": _ref("RoomName")}],
        "responses": {"200": _json(_object(["room", "members"], room=_ref("RoomName"), members={
            "type": "array", "items": _ref("UserId")}), "the members; empty for an unknown room"),
            "400": _error("not a valid room name"), **_API_ERRORS}}},
    "/static/roomcast.js": _static("text/javascript", "the JavaScript client, an ES module"),
    "/static/roomcast.d.ts": _static("text/javascript", "its TypeScript declarations"),
}

_DEMO_PATHS: dict[str, Any] = {
    "/": {"get": {"summary": "the demo page (demo mode only)", "tags": ["demo"],
                  "responses": {"200": _text("text/html", "the page"),
                                "404": _error("the file is not installed")}}},
    "/static/demo.css": _static("text/css", "the demo page's style sheet (demo mode only)"),
    "/demo/token": {"post": {
        "summary": "mint a token for anyone (demo mode only)", "tags": ["demo"],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _object(
            ["user_id"], user_id=_ref("UserId"),
            scope={"type": "string", "nullable": True,
                   "description": "e.g. `roomcast:broadcast`"},
            ttl={"type": "number", "minimum": 1, "maximum": MAX_TTL, "default": 3600},
        )}}},
        "responses": {
            "200": _json(_object(["token", "ws_url"], token={"type": "string"},
                                 ws_url={"type": "string"}), "a token and where to use it"),
            "400": _error("a body that is not of this form"),
            "403": _error("an `Origin` other than the demo page's own, or a `Host` that "
                          "is not localhost, an IP address or the configured host"),
            **_BODY_ERRORS,
            "415": _error("a `Content-Type` other than `application/json`"),
            "503": _error("the service has no `jwt_secret` to sign with; or "
                          "`http_max_requests` requests are being served already"),
        }}},
    "/demo/ws-url": {"get": {
        "summary": "the WebSocket URL on the host the page used (demo mode only)",
        "tags": ["demo"],
        "responses": {"200": _json(_object(["ws_url"], ws_url={"type": "string"}),
                                   "where the demo page connects")}}},
}


def document(config: Config) -> dict[str, Any]:
    """The document for this service: the demo's paths appear only in demo mode."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "roomcast HTTP API",
            "version": "1",
            "description": "Health, metrics, notifications and presence of a roomcast "
                           "node. The WebSocket protocol is in docs/protocol.md.",
        },
        "paths": {**_PATHS, **(_DEMO_PATHS if config.demo else {})},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "the service's `api_key`"}},
        },
    }
