"""The hot tier: an in-process LRU of entries, bounded in bytes. A hit here touches neither
SQLite, nor the disk, nor a thread."""

from __future__ import annotations

from collections import OrderedDict

from edge.entry import Entry


class MemoryTier:
    def __init__(self, max_bytes: int, max_object_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self.bytes = 0
        self.evictions = 0
        self._items: OrderedDict[str, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Entry | None:
        entry = self._items.get(key)
        if entry is not None:
            self._items.move_to_end(key)
        return entry

    def put(self, entry: Entry) -> None:
        if entry.size > self.max_object_bytes or entry.size > self.max_bytes:
            return
        old = self._items.pop(entry.key, None)
        if old is not None:
            self.bytes -= old.size
        self._items[entry.key] = entry
        self.bytes += entry.size
        while self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.size
            self.evictions += 1

    def discard(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def discard_prefix(self, prefix: str) -> int:
        keys = [k for k in self._items if k.startswith(prefix)]
        for k in keys:
            self.discard(k)
        return len(keys)

    def keys(self) -> list[str]:
        return list(self._items)

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
