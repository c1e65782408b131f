"""What one weather lookup returns to the user: producer answer, stale fallback or 503."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .balancer import Answer, Balancer, Unavailable
from .cache import LastGoodCache

log = logging.getLogger(__name__)

CONSUMER_STALE_MESSAGE = "CAUTION - Response out of date, producer unreachable!"
#: the consumer's own copy, served because the producers have no data right now
NO_DATA_STALE_MESSAGE = "CAUTION - Response out of date, no current weather data!"
PRODUCER_STALE_MESSAGE = "CAUTION - Response out of date!"


@dataclass
class Result:
    status: int
    body: dict
    # fresh | producer_stale | consumer_cache | no_data | not_found | bad_request | unavailable
    outcome: str


class WeatherService:
    def __init__(self, balancer: Balancer, cache: LastGoodCache, metrics=None):
        self.balancer = balancer
        self.cache = cache
        self.metrics = metrics

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            try:
                self.metrics.outcome(outcome)
            except Exception:  # metrics must never break a lookup
                log.exception("metrics hook failed")

    def lookup(self, zip_code: str, country: str) -> Result:
        try:
            got = self.balancer.get_weather(zip_code, country)
        except Exception as exc:  # never a 500: the fallback still applies
            log.error("balancer failed: %s", type(exc).__name__, exc_info=exc)
            got = Unavailable("an internal error stopped the lookup")
        if isinstance(got, Answer) and got.kind == "weather":
            result = self._from_answer(zip_code, country, got)
        elif isinstance(got, Answer) and got.kind == "no_data":
            result = self._no_data(zip_code, country, got)
        elif isinstance(got, Answer):
            result = self._client_error(zip_code, country, got)
        else:
            result = self._fallback(zip_code, country, got)
        self._count(result.outcome)
        return result

    def _from_answer(self, zip_code: str, country: str, ans: Answer) -> Result:
        body = dict(ans.body)  # validated fields only (balancer.validate_weather_body)
        body.update({"zip": zip_code, "country": country, "source": "producer",
                     "producer": ans.instance.public_name})
        # Fresh or the producer's stale copy: both become our last good, back-dated by
        # their age (a stale copy never replaces a newer entry).
        try:
            self.cache.put(zip_code, country, ans.body, ans.instance.public_name)
        except Exception:
            log.exception("could not save the answer")
        if body["stale"]:
            body["message"] = body.get("message") or PRODUCER_STALE_MESSAGE
            return Result(200, body, "producer_stale")
        body["message"] = None
        return Result(200, body, "fresh")

    def _client_error(self, zip_code: str, country: str, ans: Answer) -> Result:
        body = dict(ans.body)
        body.setdefault("error", "unknown zip" if ans.status == 404
                        else f"producer answered HTTP {ans.status}")
        body.update({"zip": zip_code, "country": country, "source": "producer",
                     "producer": ans.instance.public_name})
        return Result(ans.status, body, "not_found" if ans.status == 404 else "bad_request")

    def _saved(self, zip_code: str, country: str):
        hit = self.cache.get(zip_code, country)
        if self.metrics is not None:
            try:
                self.metrics.cache_lookup(hit is not None)
            except Exception:
                log.exception("metrics hook failed")
        return hit

    def _stale_body(self, hit, message: str) -> dict:
        body = dict(hit.body)
        body.update({
            "source": "consumer-cache",
            "producer": hit.producer,
            "stale": True,
            "age_seconds": int(hit.age_seconds),
            "message": message,
        })
        return body

    def _no_data(self, zip_code: str, country: str, ans: Answer) -> Result:
        """A producer answered "no data for this place right now" (not a failure)."""
        reason, detail = ans.body["reason"], ans.body["error"]
        # The producer's text says what is missing; ours already says "unavailable".
        shown = detail.removeprefix("weather data unavailable: ").rstrip(".")
        hit = self._saved(zip_code, country)
        if hit is not None:
            body = self._stale_body(hit, NO_DATA_STALE_MESSAGE)
            body.update({"zip": zip_code, "country": country, "reason": reason,
                         "detail": detail})
            return Result(200, body, "consumer_cache")
        return Result(503, {
            "error": f"Weather is unavailable right now: {shown}, "
                     "and there is no saved answer for this place yet. Please try again shortly.",
            "reason": reason,
            "detail": detail,
            "zip": zip_code,
            "country": country,
            "source": "producer",
            "producer": ans.instance.public_name,
        }, "no_data")

    def _fallback(self, zip_code: str, country: str, why: Unavailable) -> Result:
        hit = self._saved(zip_code, country)
        if hit is not None:
            body = self._stale_body(hit, CONSUMER_STALE_MESSAGE)
            body.update({"zip": zip_code, "country": country, "reason": why.reason})
            return Result(200, body, "consumer_cache")
        return Result(503, {
            "error": f"Weather is unavailable right now: {why.reason}, "
                     "and there is no saved answer for this place yet. Please try again shortly.",
            "reason": why.reason,
            "zip": zip_code,
            "country": country,
        }, "unavailable")
