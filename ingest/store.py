"""Store an upload at the origin: original, then every variant, then the manifest.

The manifest goes last, so its presence means the set is complete; a failure part-way
leaves no manifest and the upload is retried whole.
"""

from __future__ import annotations

import asyncio
from typing import Any

from common.errors import NotFound, OriginTimeout, OriginUnavailable, ServiceUnavailable
from ingest import manifest as M
from ingest.body import Upload
from origin import Origin
from origin import keys as K
from transcode.formats import MEDIA_TYPES, SOURCE_MEDIA_TYPES
from transcode.ladder import Ladder
from transcode.probe import Header

PARALLEL_PUTS = 4


def unavailable(exc: OriginUnavailable | OriginTimeout) -> ServiceUnavailable:
    return ServiceUnavailable(f"the origin is unavailable ({exc.detail}); nothing was "
                              "changed, retry later", headers={"Retry-After": "5"})


class DamagedManifest(OriginUnavailable):
    """A manifest at the origin that is not the JSON we wrote."""


async def load_manifest(origin: Origin, image_id: str,
                        deleting: bool = False) -> dict[str, Any] | None:
    """The image's manifest; None if it has none, or (unless `deleting`) if a delete of it
    began and was cut short: its objects may be gone, so it is not an image any more
    (an upload of the same bytes rebuilds it; a delete sent again finishes)."""
    try:
        _, data = await origin.read(K.manifest(image_id))
    except NotFound:
        return None
    except (OriginUnavailable, OriginTimeout) as exc:
        raise unavailable(exc) from exc
    try:
        manifest = M.decode(data)
        if manifest.get("id") != image_id or not isinstance(manifest.get("variants"), list):
            raise ValueError("not this image's manifest")
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedManifest(f"the manifest of {image_id} at the origin is damaged; "
                              "uploading the image again rewrites it") from exc
    if manifest.get("deleting") is True and not deleting:
        return None
    return manifest


async def mark_deleting(origin: Origin, image_id: str, manifest: dict[str, Any] | None) -> None:
    """First step of a delete: from here on the image is gone for uploads and reads."""
    marked = dict(manifest or {"id": image_id, "variants": []}, deleting=True)
    try:
        await origin.put(K.manifest(image_id), M.encode(marked), "application/json",
                         {"blake3": image_id})
    except (OriginUnavailable, OriginTimeout) as exc:
        raise unavailable(exc) from exc


async def store(origin: Origin, upload: Upload, header: Header, ladder: Ladder) -> dict[str, Any]:
    manifest = M.build_manifest(upload.id, upload.size, header, ladder)
    slots = asyncio.Semaphore(PARALLEL_PUTS)

    async def put_variant(e: Any) -> None:
        async with slots:
            await origin.put(K.variant(upload.id, e.variant, e.format), e.data,
                             MEDIA_TYPES[e.format],
                             {"blake3": e.blake3, "width": str(e.width),
                              "height": str(e.height)})

    try:
        await origin.put(K.original(upload.id), upload.open_stream(),
                         SOURCE_MEDIA_TYPES[header.format], {"blake3": upload.id})
        await asyncio.gather(*(put_variant(e) for e in ladder.outputs))
        await origin.put(K.manifest(upload.id), M.encode(manifest), "application/json",
                         {"blake3": upload.id})
    except (OriginUnavailable, OriginTimeout) as exc:
        raise unavailable(exc) from exc
    return manifest


async def delete_objects(origin: Origin, image_id: str) -> None:
    """Variants and original; the manifest stays until the delete is recorded."""
    try:
        for key in await origin.list(K.variants_prefix(image_id), limit=10_000):
            await origin.delete(key)
        await origin.delete(K.original(image_id))
    except (OriginUnavailable, OriginTimeout) as exc:
        raise unavailable(exc) from exc


async def delete_manifest(origin: Origin, image_id: str) -> None:
    try:
        await origin.delete(K.manifest(image_id))
    except (OriginUnavailable, OriginTimeout) as exc:
        raise unavailable(exc) from exc
