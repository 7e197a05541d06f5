"""Bearer tokens by name, compared in constant time, and the key ring a SIGHUP swaps."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable

from aiohttp import web

from common.errors import ConfigError, ServiceUnavailable, Unauthorized
from config.schema import KEY_KINDS, KeyKind, NamedKey, Secrets

log = logging.getLogger("mediacdn.auth")
RELOAD_SECONDS = 10.0  # reading the config and the key files: past this, keep the old keys


class KeyRing:
    """The keys a service checks and its clients send. Config stays frozen: a reload
    builds a new frozen `Secrets` and swaps this one reference, so every handler and
    client reads either the old set or the new one, never a mix."""

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets
        self._reloading: asyncio.Task[bool] | None = None

    def admin_token(self) -> str | None:
        return self.secrets.admin_token

    def admin_token_name(self) -> str:
        k = self.secrets.first("admin_tokens")
        return k.name if k else "none"

    def reload_soon(self, load: Callable[[], Secrets]) -> None:
        """SIGHUP: `load` (the config file and key files, read again) runs in a thread; a
        second signal during a reload is taken by that reload's successor."""
        if self._reloading is not None and not self._reloading.done():
            self._reloading.add_done_callback(lambda _: self.reload_soon(load))
            return
        self._reloading = asyncio.get_running_loop().create_task(self.reload(load))

    async def reload(self, load: Callable[[], Secrets]) -> bool:
        try:
            async with asyncio.timeout(RELOAD_SECONDS):
                secrets = await asyncio.to_thread(load)
        except ConfigError as exc:
            log.error("key reload refused, keeping the previous keys: %s", exc)
            return False
        except TimeoutError:
            log.error("key reload took over %g s, keeping the previous keys", RELOAD_SECONDS)
            return False
        except Exception:  # a bug must not cost the service its keys either
            log.exception("key reload failed, keeping the previous keys")
            return False
        self.secrets = secrets
        log.info("keys reloaded: %s", describe(secrets), extra={
            kind: [k.name for k in secrets.usable(kind)] for kind in KEY_KINDS})
        return True


KEYRING = web.AppKey("keyring", KeyRing)
KEY_USED = web.RequestKey("key_used", str)  # the name of the key that authenticated it


def describe(secrets: Secrets) -> str:
    """Names only, e.g. `api_keys=app-2026-11,app-2026-05 admin_tokens=ops ...`."""
    return " ".join(f"{kind}={','.join(k.name for k in secrets.usable(kind)) or '-'}"
                    for kind in KEY_KINDS)


def require_bearer(request: web.Request, keys: tuple[NamedKey, ...], what: str) -> str:
    """The name of the usable key the request's bearer token is; 401 otherwise. Every key
    is compared (constant time each), so the answer's timing says nothing of which."""
    if not any(k.usable for k in keys):
        raise ServiceUnavailable(f"no {what} configured")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(f"missing {what}: send 'Authorization: Bearer <{what}>'",
                           headers={"WWW-Authenticate": 'Bearer realm="mediacdn"'})
    given = token.strip().encode()
    found: NamedKey | None = None
    for k in keys:
        if k.value is not None and hmac.compare_digest(given, k.value.encode()) and k.enabled:
            found = found or k
    if found is None:
        raise Unauthorized(f"wrong {what}",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    request[KEY_USED] = found.name
    return found.name


def require(request: web.Request, kind: KeyKind, what: str) -> str:
    """`require_bearer` against the app's current keys of `kind`."""
    return require_bearer(request, request.app[KEYRING].secrets.of(kind), what)
