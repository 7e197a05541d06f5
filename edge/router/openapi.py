"""The router's OpenAPI 3.1 document, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from common.openapi import ID_PARAM, PROBLEM, ops_paths, problem_response

_query = [
    {"name": "region", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "force this region (else country, then client address, then default)"},
    {"name": "country", "in": "query", "required": False,
     "schema": {"type": "string", "pattern": "^[A-Za-z]{2}$"},
     "description": "ISO 3166 alpha-2 country, as the X-Client-Country header"},
]
_country_header = {
    "name": "X-Client-Country", "in": "header", "required": False,
    "schema": {"type": "string"},
    "description": "the client's country, as a load balancer sets it",
}
_name = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,31}(\\.(avif|webp|jpg))?$"},
}
_candidate = {
    "type": "object",
    "properties": {
        "region": {"type": "string"},
        "distance_km": {"type": "number"},
        "edges": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "healthy": {"type": "boolean"},
            "score": {"type": "integer"}}}},
    },
}
_route = {
    "type": "object",
    "required": ["region", "reason", "served_by_region", "failover", "edge", "url"],
    "properties": {
        "region": {"type": "string"},
        "reason": {"type": "string", "enum": ["param", "country", "cidr", "default"]},
        "served_by_region": {"type": "string"},
        "failover": {"type": "boolean"},
        "edge": {"type": "string"},
        "url": {"type": "string"},
        "id": {"type": ["string", "null"]},
        "candidates": {"type": "array", "items": _candidate},
        "client": {"type": ["string", "null"], "description":
                   "The client address the choice used: `?ip=`, else the peer, or behind a "
                   "proxy in `trusted_proxies` the right-most X-Forwarded-For / Forwarded "
                   "address that is not itself trusted."},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "mediacdn router", "version": "1"},
    "components": {"schemas": {"Problem": PROBLEM, "Route": _route}},
    "paths": {
        "/i/{id}/{name}": {
            "parameters": [ID_PARAM, _name, *_query, _country_header],
            "get": {
                "summary": "Redirect to the healthy edge that owns the id in the client's region",
                "responses": {
                    "302": {"description": "Location: the chosen edge's URL for this path",
                            "headers": {"Location": {"schema": {"type": "string"}},
                                        "X-Edge": {"schema": {"type": "string"}}}},
                    "400": problem_response("malformed id or unknown region"),
                    "404": problem_response("variant not in the config's ladder"),
                    "503": problem_response("no healthy edge in any region"),
                },
            },
        },
        "/i/{id}/t/{sig}/{spec}": {
            "parameters": [ID_PARAM,
                           {"name": "sig", "in": "path", "required": True,
                            "schema": {"type": "string"}},
                           {"name": "spec", "in": "path", "required": True,
                            "schema": {"type": "string"}}, *_query, _country_header],
            "get": {
                "summary": "A signed transform: redirect to the chosen edge, once the "
                           "signature is checked",
                "responses": {
                    "302": {"description": "Location: the chosen edge's URL for this path",
                            "headers": {"Location": {"schema": {"type": "string"}},
                                        "X-Edge": {"schema": {"type": "string"}}}},
                    "400": problem_response("malformed id or unknown region"),
                    "403": problem_response("missing or wrong signature"),
                    "503": problem_response("no healthy edge in any region"),
                },
            },
        },
        "/v1/route": {
            "get": {
                "summary": "Explain the choice the router would make",
                "parameters": [
                    *_query, _country_header,
                    {"name": "id", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                ],
                "responses": {
                    "200": {"description": "the choice",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Route"}}}},
                    "400": problem_response("malformed id or unknown region"),
                    "503": problem_response("no healthy edge in any region"),
                },
            }
        },
        **ops_paths(),
    },
}
