"""The server's TLS settings: one `ssl.SSLContext` for the WebSocket port, read once at
startup from `tls_cert` and `tls_key` (the HTTP port's hypercorn reads the same files).

A file that cannot be read or is not a matching PEM certificate and key is
`TlsUnavailable`, one line naming the file and the reason (never the key's content),
before any port is bound."""

from __future__ import annotations

import ssl
from pathlib import Path

from roomcast.config import Config


class TlsUnavailable(Exception):
    """The certificate or key cannot be used; its text is one clear line."""


def server_context(config: Config) -> ssl.SSLContext | None:
    """The WebSocket port's TLS context, or None when TLS is not configured. TLS 1.2 at
    least; the defaults of `ssl.create_default_context(Purpose.CLIENT_AUTH)` otherwise
    (no client certificate asked for)."""
    cert, key = config.tls_cert, config.tls_key
    if cert is None or key is None:
        return None
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        _readable(name, path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        # OpenSSL's reason ("KEY_VALUES_MISMATCH", "PEM lib"), never the file's content.
        reason = error.reason or error.strerror or type(error).__name__
        raise TlsUnavailable(f"cannot use tls_cert {str(cert)!r} with tls_key {str(key)!r}: "
                             f"{reason.lower().replace('_', ' ')} (PEM files expected)"
                             ) from None
    return context


def _readable(name: str, path: Path) -> None:
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise TlsUnavailable(f"cannot read {name} {str(path)!r}: {reason}") from None
