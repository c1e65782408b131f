"""gunicorn settings for the fake OWM (one process: the mode and stats live in memory)."""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8090")
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
timeout = 120
graceful_timeout = 5
worker_tmp_dir = "/tmp"
accesslog = None
