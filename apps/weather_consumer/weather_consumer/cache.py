"""The consumer's own last good answers, in memory, per (zip, country).

Built on weather_common's :class:`MemoryLastGoodStore` (keys ``<country>/<zip>``, the
newer answer wins; at most ``max_entries`` locations, least recently used evicted). Only FRESH producer answers go in (``stale`` false). An entry's
``fetched_at`` is back-dated by the age the producer reported, so the age we show later
is never younger than what the producer said.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from weather_common.cache import MemoryLastGoodStore, location_key


@dataclass(frozen=True)
class Saved:
    body: dict
    producer: str
    age_seconds: float


class LastGoodCache:
    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = 10_000):
        self._store = MemoryLastGoodStore(max_entries=max_entries)
        self._clock = clock

    def put(self, zip_code: str, country: str, body: dict, producer: str) -> None:
        if body.get("stale"):
            raise ValueError("a stale answer must not be cached as last good")
        try:
            age = max(0.0, float(body.get("age_seconds") or 0))
        except (TypeError, ValueError):
            age = 0.0
        self._store.put(location_key(country, zip_code),
                        {"body": dict(body), "producer": producer},
                        fetched_at=self._clock() - age)

    def get(self, zip_code: str, country: str) -> Saved | None:
        entry = self._store.get(location_key(country, zip_code))
        if entry is None:
            return None
        return Saved(entry.value["body"], entry.value["producer"], entry.age(self._clock()))

    def __len__(self) -> int:
        return len(self._store.items())

    def snapshot(self) -> list[dict]:
        now = self._clock()
        rows = []
        for key, entry in self._store.items():
            country, _, zip_code = key.partition("/")
            rows.append({"zip": zip_code, "country": country,
                         "age_seconds": entry.age_seconds(now)})
        return rows
