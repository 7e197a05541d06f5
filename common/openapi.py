"""Pieces shared by the services' OpenAPI documents."""

from __future__ import annotations

from typing import Any

PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}


def problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
}


def ops_paths() -> dict[str, Any]:
    status = {"type": "object", "properties": {"status": {"type": "string"}}}
    json_ok = {"content": {"application/json": {"schema": status}}}
    return {
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "responses": {"200": {"description": "alive", **json_ok}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness",
                "responses": {
                    "200": {"description": "ready", **json_ok},
                    "503": {"description": "not ready", **json_ok},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
