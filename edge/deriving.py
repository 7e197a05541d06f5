"""A miss layer: a variant the current config defines but the origin lacks (the ladder
changed after the upload) is derived by ingest on the first request, then fetched.

    SingleFlight(Remembering(Deriving(...)))

On the inner layers' NotFound for a derivable name of an image the origin has (its manifest:
one HEAD, so a flood of unknown ids never reaches ingest), ingest is asked (admin token) to
derive it from the original; then the inner layers are asked once more, all within the
miss's one deadline. Ingest runs one derivation per variant however many edges ask at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from common.errors import NotFound, OriginUnavailable, ServiceUnavailable, TooManyRequests
from edge.entry import Entry
from edge.fill import Upstream, timed_out
from origin import Origin
from origin import keys as K

log = logging.getLogger("mediacdn.edge.deriving")


class Deriving:
    def __init__(self, inner: Upstream, origin: Origin, ingest_url: str,
                 admin_token: Callable[[], str | None],  # the current one: keys reload
                 body_for: Callable[[str], dict[str, str] | None],
                 session: Callable[[], aiohttp.ClientSession | None]) -> None:
        self.inner, self.origin = inner, origin
        self.ingest_url, self.admin_token = ingest_url, admin_token
        self.body_for, self.session = body_for, session
        self.asked = 0  # derivations this edge asked ingest for

    async def fetch(self, key: str, deadline: float) -> Entry:
        try:
            return await self.inner.fetch(key, deadline)
        except NotFound:
            session, body = self.session(), self.body_for(key)
            if session is None or self.admin_token() is None or body is None:
                raise
        await self._image_exists(key, deadline)
        await self._ask_ingest(session, key, body, deadline)
        return await self.inner.fetch(key, deadline)

    async def _image_exists(self, key: str, deadline: float) -> None:
        """NotFound unless the origin has the image (its manifest) at all."""
        try:
            async with asyncio.timeout_at(deadline):
                await self.origin.head(K.manifest(key.split("/", 1)[0]))
        except TimeoutError:
            raise timed_out("the origin") from None

    async def _ask_ingest(self, session: aiohttp.ClientSession, key: str,
                          body: dict[str, str], deadline: float) -> None:
        self.asked += 1
        url = f"{self.ingest_url}/_internal/derive/{key}"
        try:
            async with asyncio.timeout_at(deadline), session.post(
                    url, json=body, headers={"Authorization": f"Bearer {self.admin_token()}"}
            ) as r:
                await r.read()
                status, retry = r.status, r.headers.get("Retry-After", "60")
        except TimeoutError:
            raise timed_out("ingest (deriving a variant)") from None
        except aiohttp.ClientError as exc:
            # Not a 404: the variant exists in all but bytes. Come back when ingest is up.
            raise ServiceUnavailable(f"ingest is unreachable to derive {key}; retry shortly",
                                     headers={"Retry-After": "5"}) from exc
        if status == 404:
            raise NotFound("no such image or variant")
        if status == 429:  # a rate limit on transforms of this image: the client's to see
            raise TooManyRequests("too many transforms of this image derived in a minute",
                                  headers={"Retry-After": retry})
        if status != 200:
            log.warning("ingest answered %d to derive %s", status, key)
            raise OriginUnavailable(f"ingest answered {status} when asked to derive {key}")
