"""gunicorn settings for the producer.

One worker process with threads: the fresh cache and single-flight live in process
memory (and the quota guard too when Consul is not configured; with Consul the OWM call
budget is shared by all producers in KV), so one process per container keeps OWM calls
bounded.

SIGTERM: gunicorn stops the worker gracefully and calls ``worker_exit`` in the worker
process, which stops the Consul registration (deregisters the service). ``atexit`` in
weather_common.consul is a second line; Consul's DeregisterCriticalServiceAfter covers
a SIGKILL.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = 60
graceful_timeout = 10
# heartbeat files: /dev/shm is a writable tmpfs even in a --read-only container
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
control_socket_disable = True  # gunicorn >= 27: no control socket (read-only fs, no $HOME)
accesslog = None  # the app logs one JSON line per request itself
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")


def worker_exit(server, worker):  # noqa: ARG001 - gunicorn hook signature
    """Deregister from Consul when the worker exits (SIGTERM, restart, ...)."""
    try:
        from weather_common.consul import stop_all_registrations
    except ImportError:
        return
    stop_all_registrations(timeout=3.0)
