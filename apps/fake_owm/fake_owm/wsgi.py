"""WSGI entry point: ``gunicorn fake_owm.wsgi:app``."""

from fake_owm import create_app

app = create_app()
