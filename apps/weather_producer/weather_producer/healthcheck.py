"""The producer's container healthcheck, run as a file:
``python3 -I -S /app/site-packages/weather_producer/healthcheck.py`` (the stack's
command). Standard library only, and never run as ``-m weather_producer.healthcheck``:
that imports the package, i.e. the whole app (Flask, requests, ...), at every check,
which took 15.6 s instead of 3.3 s on a loaded emulated Pi, past the check's timeout.

Healthy (exit 0) when the producer answers ``/ready`` with 200 and, when it registers
itself in Consul, its registration is in place (the agent accepted it and its TTL check
is being passed). An orchestrator that waits for healthy before it moves on (swarm's
rolling update, roles/weather_app's stack) therefore waits until consumers can find the
new producer. Exit 1 otherwise, the reason on stdout (Docker keeps it in the health log
that ``docker inspect`` shows).

``/ready`` itself stays 200 while Consul is unreachable: the producer serves direct
callers without Consul. Only this check, which is about being *discoverable*, asks more.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request


def check(url: str, timeout: float = 4.0) -> tuple[bool, str]:
    """(healthy, reason) from the producer's ``/ready`` at ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            reason = json.load(exc).get("reason")
        except (ValueError, AttributeError):
            reason = None
        return False, f"not ready ({exc.code}): {reason or 'no reason given'}"
    except (OSError, ValueError) as exc:
        return False, f"no answer from {url}: {exc}"
    if body.get("consul_registered") is False:
        return False, "ready, but not registered in Consul (yet)"
    return True, "ready" + (", registered in Consul" if body.get("consul_registered") else "")


def main() -> int:
    # The port gunicorn listens on (gunicorn.conf.py reads the same variable).
    port = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000").rsplit(":", 1)[-1]
    ok, reason = check(f"http://127.0.0.1:{port}/ready")
    print(reason)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
