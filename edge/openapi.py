"""The edge API's OpenAPI 3.1 document, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from common.openapi import ID_PARAM, PROBLEM, ops_paths, problem_response

_image = {
    "description": "the variant's bytes",
    "headers": {
        "ETag": {"schema": {"type": "string"}},
        "Cache-Control": {"schema": {"type": "string"}},
        "X-Cache": {"schema": {"type": "string", "enum": ["HIT", "MISS"]}},
    },
    "content": {
        t: {"schema": {"type": "string", "format": "binary"}}
        for t in ("image/webp", "image/jpeg", "image/avif")
    },
}
_media_responses: dict[str, dict[str, Any]] = {
    "200": _image,
    "206": {"description": "the requested byte range"},
    "304": {"description": "not modified (If-None-Match)"},
    "400": problem_response("malformed id, variant or extension"),
    "404": problem_response("unknown id or variant"),
    "416": problem_response("range not satisfiable"),
    "502": problem_response("origin unavailable or bytes failed verification"),
    "503": problem_response("catching up on purges, or ingest unreachable to derive it"),
    "504": problem_response("origin timeout"),
}
_transform_responses: dict[str, dict[str, Any]] = {
    "200": _image,
    "400": problem_response("malformed id or extension; spec malformed or over the limits"),
    "403": problem_response("missing or wrong signature"),
    "404": problem_response("unknown id, or a format not enabled"),
    "429": problem_response("too many transforms of this image derived in a minute"),
    "502": problem_response("origin unavailable or bytes failed verification"),
    "503": problem_response("catching up on purges, or ingest unreachable to derive it"),
    "504": problem_response("origin timeout"),
}
_path_text = {"in": "path", "required": True, "schema": {"type": "string"}}
_name = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string",
               "pattern": "^[a-z0-9][a-z0-9_-]{0,31}(@[0-9]{1,2}x)?(\\.(avif|webp|jpg))?$"},
}
_bearer: list[dict[str, list[str]]] = [{"bearer": []}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "mediacdn edge", "version": "1"},
    "components": {
        "schemas": {"Problem": PROBLEM},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "paths": {
        "/i/{id}/{name}": {
            "parameters": [ID_PARAM, _name],
            "get": {
                "summary": "A variant ({variant}.{ext}, or {variant} to negotiate)",
                "responses": _media_responses,
            },
            "head": {
                "summary": "The GET headers without the body",
                "responses": {
                    k: {"description": v["description"]} for k, v in _media_responses.items()
                },
            },
        },
        "/i/{id}/t/{sig}/{spec}": {
            "parameters": [ID_PARAM, {"name": "sig", **_path_text},
                           {"name": "spec", "description": "{spec}.{ext}, e.g. "
                            "w=800,h=600,fit=cover,g=attention,q=70.webp", **_path_text}],
            "get": {
                "summary": "A signed transform (sig: base64url HMAC-SHA256 of {id}/{spec}.{ext})",
                "responses": _transform_responses,
            },
        },
        "/_admin/purge": {
            "post": {
                "summary": "Drop ids (or everything) from this node's cache",
                "security": _bearer,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "ids": {"type": "array", "items": {"type": "string"}},
                                    "all": {"type": "boolean"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "purged",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"purged": {"type": "integer"}},
                                }
                            }
                        },
                    },
                    "400": problem_response("malformed body"),
                    "401": problem_response("missing or wrong admin token"),
                },
            }
        },
        "/_admin/stats": {
            "get": {
                "summary": "Cache statistics",
                "security": _bearer,
                "responses": {
                    "200": {
                        "description": "statistics",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "401": problem_response("missing or wrong admin token"),
                },
            }
        },
        **ops_paths(),
    },
}
