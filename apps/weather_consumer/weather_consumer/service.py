"""What one weather lookup returns to the user: producer answer, stale fallback or 503."""

from __future__ import annotations

from dataclasses import dataclass

from .balancer import Answer, Balancer, Unavailable
from .cache import LastGoodCache

CONSUMER_STALE_MESSAGE = "CAUTION - Response out of date, producer unreachable!"
PRODUCER_STALE_MESSAGE = "CAUTION - Response out of date!"


@dataclass
class Result:
    status: int
    body: dict
    outcome: str  # fresh | producer_stale | consumer_cache | not_found | bad_request | unavailable


class WeatherService:
    def __init__(self, balancer: Balancer, cache: LastGoodCache, metrics=None):
        self.balancer = balancer
        self.cache = cache
        self.metrics = metrics

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.outcome(outcome)

    def lookup(self, zip_code: str, country: str) -> Result:
        got = self.balancer.get_weather(zip_code, country)
        if isinstance(got, Answer):
            result = self._from_answer(zip_code, country, got)
        else:
            result = self._fallback(zip_code, country, got)
        self._count(result.outcome)
        return result

    def _from_answer(self, zip_code: str, country: str, ans: Answer) -> Result:
        body = dict(ans.body)
        body["source"] = "producer"
        body["producer"] = ans.instance.id
        if ans.status != 200:
            body.setdefault("error", f"producer answered HTTP {ans.status}")
            outcome = "not_found" if ans.status == 404 else "bad_request"
            return Result(ans.status, body, outcome)
        if body.get("stale"):
            # Passed through as the producer's stale answer; NOT stored as last good.
            body["stale"] = True
            body["message"] = body.get("message") or PRODUCER_STALE_MESSAGE
            body.setdefault("age_seconds", 0)
            return Result(200, body, "producer_stale")
        body["stale"] = False
        body.setdefault("age_seconds", 0)
        body.setdefault("message", None)
        self.cache.put(zip_code, country, ans.body, ans.instance.id)
        return Result(200, body, "fresh")

    def _fallback(self, zip_code: str, country: str, why: Unavailable) -> Result:
        hit = self.cache.get(zip_code, country)
        if self.metrics is not None:
            self.metrics.cache_lookup(hit is not None)
        if hit is not None:
            body = dict(hit.body)
            body.update({
                "source": "consumer-cache",
                "producer": hit.producer,
                "stale": True,
                "age_seconds": int(hit.age_seconds),
                "message": CONSUMER_STALE_MESSAGE,
                "reason": why.reason,
            })
            return Result(200, body, "consumer_cache")
        return Result(503, {
            "error": f"Weather is unavailable right now: {why.reason}, "
                     "and there is no saved answer for this place yet. Please try again shortly.",
            "reason": why.reason,
            "zip": zip_code,
            "country": country,
        }, "unavailable")
