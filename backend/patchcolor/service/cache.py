"""A byte-bounded, thread-safe LRU cache (kept per-job fusion state for recompose)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class CacheStats:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


class ByteLRU(Generic[K, V]):
    """Least-recently-used mapping whose values' declared sizes sum to at most ``max_bytes``.

    ``put`` evicts the oldest entries until the new one fits; a value larger than the whole budget is not kept
    (``put`` returns False). ``get`` refreshes an entry. All methods are safe to call from several threads.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def put(self, key: K, value: V, nbytes: int) -> bool:
        nbytes = int(nbytes)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self.max_bytes:
                return False
            while self._items and self._bytes + nbytes > self.max_bytes:
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size
                self._evictions += 1
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            return True

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return item[0]

    def items(self) -> list[tuple[K, V]]:
        """A snapshot of the entries, most recently used first (does not refresh them)."""
        with self._lock:
            return [(k, v) for k, (v, _) in reversed(self._items.items())]

    def pop(self, key: K) -> V | None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self._bytes -= item[1]
            return item[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._items), self._bytes, self.max_bytes, self._hits, self._misses,
                              self._evictions)
