"""Typed reads from one TOML table, each failure naming the full key (`edge.cache_bytes`)."""

from __future__ import annotations

from typing import Any, TypeVar

from common.errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()


class Table:
    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path or "<root>", f"must be a table, got {type(data).__name__}")
        self._data: dict[str, Any] = data
        self._path = path
        self._seen: set[str] = set()

    @property
    def path(self) -> str:
        return self._path

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def has(self, name: str) -> bool:
        return name in self._data

    def _get(self, name: str, default: Any) -> Any:
        self._seen.add(name)
        if name in self._data:
            return self._data[name]
        if default is _MISSING:
            raise ConfigError(self.key(name), "is required")
        return default

    def text(self, name: str, default: Any = _MISSING, *, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(name, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(self.key(name), "must be a non-empty string")
        if choices and value not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def integer(
        self, name: str, default: Any = _MISSING, *, lo: int = 0, hi: int | None = None
    ) -> Any:
        value = self._get(name, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"must be an integer, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ConfigError(self.key(name), f"must be {bound}, got {value}")
        return value

    def number(self, name: str, default: Any = _MISSING, *, lo: float = 0.0) -> Any:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(name), f"must be a number, got {value!r}")
        if value < lo:
            raise ConfigError(self.key(name), f"must be >= {lo}, got {value}")
        return float(value)

    def flag(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"must be true or false, got {value!r}")
        return value

    def texts(self, name: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self._get(name, default)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.key(name), "must be a list of strings")
        return tuple(value)

    def table(self, name: str, *, optional: bool = True) -> Table:
        value = self._get(name, {} if optional else _MISSING)
        return Table(value, self.key(name))

    def tables(self, name: str, default: Any = _MISSING) -> list[Table]:
        value = self._get(name, default)
        if not isinstance(value, list):
            raise ConfigError(self.key(name), "must be an array of tables ([[...]])")
        return [Table(v, f"{self.key(name)}[{i}]") for i, v in enumerate(value)]

    def get_raw(self, name: str, default: Any) -> Any:
        return self._get(name, default)

    def only(self, *names: str) -> None:
        """Refuse unknown keys up front, so a typo is named as itself and not as a
        missing required key."""
        for name in self._data:
            if name not in names:
                raise ConfigError(self.key(name), "unknown key")

    def done(self) -> None:
        """Refuse keys nobody read: a typo must not silently fall back to a default."""
        for name in self._data:
            if name not in self._seen:
                raise ConfigError(self.key(name), "unknown key")
