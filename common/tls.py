"""TLS for the services (a server context reloaded in place on SIGHUP) and for mediacdn's
own clients (verifying with the configured CA bundle, else the system store)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from common.errors import ConfigError
from config.schema import Listener

log = logging.getLogger("mediacdn.tls")


def server_context(listener: Listener, key: str) -> ssl.SSLContext | None:
    """The context the port serves HTTPS with; None without tls_cert. `key` names the
    service's config table in the error."""
    if listener.tls_cert is None or listener.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(listener.tls_cert, listener.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}.tls_cert", f"cannot load {listener.tls_cert} with "
                          f"{listener.tls_key}: {exc}") from None
    return ctx


def reload(ctx: ssl.SSLContext, listener: Listener) -> bool:
    """Load the cert and key again into the same context: handshakes from now on use the
    new pair, open connections keep theirs. A bad pair is logged and the old one kept."""
    assert listener.tls_cert is not None and listener.tls_key is not None
    try:
        ctx.load_cert_chain(listener.tls_cert, listener.tls_key)
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS reload failed, keeping the previous certificate: %s", exc)
        return False
    log.info("TLS certificate reloaded from %s", listener.tls_cert)
    return True


def client_context(ca: Path | None) -> ssl.SSLContext:
    """What mediacdn's clients verify HTTPS services with (hostname checked too)."""
    try:
        return ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls_ca", f"cannot load {ca}: {exc}") from None
