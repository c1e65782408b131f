"""Shared parts of the weather services (see README.md for the API)."""

from .breaker import CLOSED, HALF_OPEN, OPEN, BreakerStats, CircuitBreaker, CircuitOpenError
from .cache import ConsulLastGoodStore, Entry, FreshCache, MemoryLastGoodStore, location_key
from .consul import (
    ConsulBadValue,
    ConsulClient,
    ConsulError,
    ConsulUnavailable,
    HealthWatcher,
    Instance,
    ServiceRegistration,
    stop_all_registrations,
)
from .deadline import (
    Deadline,
    HttpBodyTooLarge,
    HttpClient,
    HttpConnectError,
    HttpError,
    HttpProtocolError,
    HttpResponse,
    HttpTimeout,
)
from .validation import ValidationError, validate_country, validate_location, validate_zip

__all__ = [
    "CLOSED", "HALF_OPEN", "OPEN", "BreakerStats", "CircuitBreaker", "CircuitOpenError",
    "ConsulLastGoodStore", "Entry", "FreshCache", "MemoryLastGoodStore", "location_key",
    "ConsulBadValue", "ConsulClient", "ConsulError", "ConsulUnavailable", "HealthWatcher", "Instance",
    "ServiceRegistration", "stop_all_registrations",
    "Deadline", "HttpBodyTooLarge", "HttpClient", "HttpConnectError", "HttpError", "HttpProtocolError",
    "HttpResponse", "HttpTimeout",
    "ValidationError", "validate_country", "validate_location", "validate_zip",
]
__version__ = "0.1.0"
