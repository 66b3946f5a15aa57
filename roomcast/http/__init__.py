"""The HTTP side: health, readiness, metrics, the notification and presence API, the
JavaScript client and, in demo mode, the demo page."""

from roomcast.http.server import serve_http

__all__ = ["serve_http"]
