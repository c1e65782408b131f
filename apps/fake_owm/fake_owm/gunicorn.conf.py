"""gunicorn settings for the fake OWM (one process: the mode and stats live in memory)."""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8090")
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
timeout = 120
graceful_timeout = 5
# heartbeat files: /dev/shm is a writable tmpfs even in a --read-only container
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
control_socket_disable = True  # gunicorn >= 27: no control socket (read-only fs, no $HOME)
accesslog = None
