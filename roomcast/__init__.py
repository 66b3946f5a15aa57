"""roomcast: real-time WebSocket rooms and notifications, as a Trio actor system."""

from roomcast.actors.streams import BackplaneUnavailable
from roomcast.auth import Authenticator, AuthError, Principal, mint_token
from roomcast.config import Config
from roomcast.facade import NotificationService, ServiceNotRunning
from roomcast.protocol import CloseCode, MessageType, NotificationLevel
from roomcast.remote import SyncNotificationService
from roomcast.service import Service, ServiceFailed, open_service, serve

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
    "Service",
    "ServiceFailed",
    "ServiceNotRunning",
    "SyncNotificationService",
    "mint_token",
    "open_service",
    "serve",
]
