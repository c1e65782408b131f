"""gunicorn settings for the consumer.

One worker process with threads: the producer pool, the per-instance breakers, the
Consul watcher and the last-good cache live in process memory, so one process per
container keeps them consistent (scale with more containers).

Two listeners: the public one (``GUNICORN_BIND``, 0.0.0.0:8080: the pages,
``/api/weather``, ``/health``, ``/ready``) and the operator one
(``GUNICORN_OPERATOR_BIND``, 0.0.0.0:<WEATHER_CONSUMER_OPERATOR_PORT, 9080>: also
``/status``, ``/api/status``, ``/metrics``). The app tells them apart by the local port of
the accepted socket, so the operator bind's port must be the app's ``OPERATOR_PORT``;
publish it only where operators are (the Ansible role: the manager's loopback).
"""

import os

_operator_port = os.environ.get("WEATHER_CONSUMER_OPERATOR_PORT", "9080").strip() or "9080"
bind = [os.environ.get("GUNICORN_BIND", "0.0.0.0:8080"),
        os.environ.get("GUNICORN_OPERATOR_BIND", f"0.0.0.0:{_operator_port}")]
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
timeout = 30
graceful_timeout = 10
keepalive = 5
# heartbeat files: /dev/shm is a writable tmpfs even in a --read-only container
_shm_ok = os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
worker_tmp_dir = "/dev/shm" if _shm_ok else None
control_socket_disable = True  # gunicorn >= 27: no control socket (read-only fs, no $HOME)
accesslog = None  # the app logs one JSON line per request itself
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
