"""The ingest API's OpenAPI 3.1 document, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from common.openapi import ID_PARAM, PROBLEM, ops_paths, problem_response

VARIANT = {
    "type": "object",
    "required": ["name", "format", "width", "height", "bytes", "blake3", "path", "url"],
    "properties": {
        "name": {"type": "string"},
        "format": {"type": "string", "enum": ["avif", "webp", "jpg"]},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "bytes": {"type": "integer"},
        "blake3": {"type": "string"},
        "path": {"type": "string"},
        "url": {"type": "string"},
    },
}
MANIFEST = {
    "type": "object",
    "required": ["id", "format", "width", "height", "bytes", "created", "variants", "placeholder"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "format": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "frames": {"type": "integer"},
        "bytes": {"type": "integer"},
        "created": {"type": "string"},
        "placeholder": {"type": "string"},
        "dominant_color": {"type": "string"},
        "variants": {"type": "array", "items": {"$ref": "#/components/schemas/Variant"}},
        "srcset": {"type": "object", "description": "per format, an <img srcset> value over "
                   "the configured widths", "additionalProperties": {"type": "string"}},
    },
}
_manifest_ok = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Manifest"}}}
}
_bearer: list[dict[str, list[str]]] = [{"bearer": []}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "mediacdn ingest", "version": "1"},
    "components": {
        "schemas": {"Problem": PROBLEM, "Variant": VARIANT, "Manifest": MANIFEST},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "paths": {
        "/v1/images": {
            "post": {
                "summary": "Upload an image (raw body, or multipart field 'file')",
                "security": _bearer,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {"file": {"type": "string", "format": "binary"}},
                            }
                        },
                    },
                },
                "responses": {
                    "200": {"description": "already stored", **_manifest_ok},
                    "201": {"description": "stored", **_manifest_ok},
                    "400": problem_response("malformed request"),
                    "401": problem_response("missing or wrong API key"),
                    "413": problem_response("body over the byte limit"),
                    "415": problem_response("not a supported image type"),
                    "422": problem_response("corrupt, truncated or over the limits"),
                    "503": problem_response("origin unavailable; nothing stored"),
                },
            }
        },
        "/v1/images/{id}": {
            "parameters": [ID_PARAM],
            "get": {
                "summary": "The manifest of an image",
                "responses": {
                    "200": {"description": "found", **_manifest_ok},
                    "400": problem_response("malformed id"),
                    "404": problem_response("unknown id"),
                },
            },
            "head": {
                "summary": "Does the origin have this image?",
                "security": _bearer,
                "responses": {
                    "200": {"description": "stored"},
                    "404": {"description": "unknown"},
                    "401": {"description": "missing or wrong API key"},
                },
            },
            "delete": {
                "summary": "Delete an image everywhere",
                "security": _bearer,
                "responses": {
                    "204": {"description": "deleted"},
                    "401": problem_response("missing or wrong admin token"),
                    "404": problem_response("unknown id"),
                },
            },
        },
        **ops_paths(),
    },
}
