"""roomcast: real-time WebSocket rooms and notifications, as a Trio actor system."""

from roomcast.actors.streams import BackplaneUnavailable
from roomcast.auth import Authenticator, AuthError, Principal, RoomAuthorizer, mint_token
from roomcast.config import Config
from roomcast.facade import NotificationService, ServiceNotRunning
from roomcast.node import open_service, serve
from roomcast.protocol import CloseCode, MessageType, NotificationLevel
from roomcast.remote import RemoteNotificationService, SyncNotificationService
from roomcast.service import Service, ServiceFailed

__all__ = [
    "AuthError",
    "Authenticator",
    "BackplaneUnavailable",
    "CloseCode",
    "Config",
    "MessageType",
    "NotificationLevel",
    "NotificationService",
    "Principal",
    "RemoteNotificationService",
    "RoomAuthorizer",
    "Service",
    "ServiceFailed",
    "ServiceNotRunning",
    "SyncNotificationService",
    "mint_token",
    "open_service",
    "serve",
]

# Public exceptions are shown as `roomcast.X` (in tracebacks, reprs and docs), where
# users import them from, not by the module that happens to define them.
for _exception in (AuthError, BackplaneUnavailable, ServiceFailed, ServiceNotRunning):
    _exception.__module__ = "roomcast"
del _exception
