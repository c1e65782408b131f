"""The consumer's own last good answers, in memory, per (zip, country).

Built on weather_common's :class:`MemoryLastGoodStore` (keys ``<country>/<zip>``, the
NEWER answer wins; at most ``max_entries`` locations, least recently used evicted). Both
fresh answers and the producers' stale answers go in: an entry's ``fetched_at`` is
back-dated by the age the producer reported, so a stale answer never replaces a newer
entry (stale copies count one more second: ages are whole seconds, rounded down), and
the age we show later is never younger than what the producer said.
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
        """Save an answer (fresh or the producer's stale copy), back-dated by its age."""
        age = body.get("age_seconds") or 0
        if isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age < 1e9:
            age = 0.0  # (the balancer validated it already; belt and braces)
        if body.get("stale"):
            # Ages are whole seconds, rounded down: a stale copy is taken as up to 1 s
            # older than it says, so the same observation never replaces our entry
            # (and the age we show is never younger than the truth).
            age += 1
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
