"""A tiny REAL producer stand-in: an HTTP server on loopback in its own process.

Speaks the producer's ``GET /weather`` contract; its behaviour is switched at run time
so load-balancer tests can make one instance fail, hang or go stale:

    POST /_mode  {"mode": "<mode>", "delay": s, "temperature": c, "reason": code}
    GET  /_hits  -> {"weather": <number of /weather requests>, "deadline_ms": [the
                     X-Deadline-Ms header of each request, or null]}

Modes: ok, error (500), unavailable (unmarked 503), nodata (503 marked
``X-Weather-Answer: no-data`` with ``{"error", "reason"}``), notfound (404 marked
not-found), ratelimited (429), slow (``delay`` s, then ok), stale (age 900 s), garbage
(HTML), nan (temperature ``NaN`` literal), badfields (temperature as a string), booltemp
(temperature ``true``), huge (a 1 MiB body), drip (headers, then one body byte every
``delay`` s), hang (accepts, never answers).

Run: ``python stub_producer.py <instance-name> [port [host]]``; it prints its port on the first line.
It is its own process so a test can SIGKILL it like a crashed producer.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STATE = {"mode": "ok", "delay": 0.0, "temperature": 21.5, "hits": 0, "reason": "owm_outage",
         "deadlines": []}
LOCK = threading.Lock()
INSTANCE = sys.argv[1] if len(sys.argv) > 1 else "stub"
OBSERVED = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body, content_type="application/json", headers=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if self.path != "/_mode":
            return self._send(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length") or 0)
        data = json.loads(self.rfile.read(length) or b"{}")
        with LOCK:
            STATE.update({k: v for k, v in data.items()
                          if k in ("mode", "delay", "temperature", "reason")})
        self._send(200, {"ok": True})

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/_hits":
            with LOCK:
                return self._send(200, {"weather": STATE["hits"],
                                        "deadline_ms": list(STATE["deadlines"])})
        if url.path == "/health":
            return self._send(200, {"status": "ok"})
        if url.path != "/weather":
            return self._send(404, {"error": "not found"})
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        header = self.headers.get("X-Deadline-Ms")
        with LOCK:
            STATE["hits"] += 1
            STATE["deadlines"].append(int(header) if header and header.isdigit() else None)
            mode, delay, temp = STATE["mode"], float(STATE["delay"]), STATE["temperature"]
            reason = STATE["reason"]
        if mode == "slow" and delay:
            time.sleep(delay)
        if mode == "hang":
            time.sleep(3600)
            return None
        zip_code, country = q.get("zip", ""), q.get("country", "us")
        body = {"zip": zip_code, "country": country, "city": f"Town {zip_code}",
                "description": "light rain", "temperature_c": temp, "observed_at": OBSERVED,
                "instance": INSTANCE, "stale": False, "age_seconds": 0, "message": None}
        if mode == "error":
            return self._send(500, {"error": "boom"})
        if mode == "unavailable":
            return self._send(503, {"error": "upstream weather service unavailable"})
        if mode == "nodata":
            return self._send(503, {"error": "The weather source is unavailable", "reason": reason,
                                    "zip": zip_code, "country": country, "instance": INSTANCE},
                              headers={"X-Weather-Answer": "no-data"})
        if mode == "ratelimited":
            return self._send(429, {"error": "slow down"})
        if mode == "notfound" or zip_code == "00000":
            return self._send(404, {"error": "unknown zip", "reason": "unknown_zip",
                                    "zip": zip_code, "country": country, "instance": INSTANCE},
                              headers={"X-Weather-Answer": "not-found"})
        if mode == "garbage":
            return self._send(200, b"<html>oops</html>", "text/html")
        if mode == "nan":
            return self._send(200, json.dumps(dict(body, temperature_c=float("nan"))).encode())
        if mode == "badfields":
            return self._send(200, dict(body, temperature_c="21.5"))
        if mode == "booltemp":
            return self._send(200, dict(body, temperature_c=True))
        if mode == "huge":
            return self._send(200, dict(body, description="x" * (1 << 20)))
        if mode == "drip":
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(delay or 0.3)
            except OSError:
                pass
            return None
        if mode == "stale":
            body.update({"stale": True, "age_seconds": 900,
                         "message": "CAUTION - Response out of date!"})
        return self._send(200, body)


def main():
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
