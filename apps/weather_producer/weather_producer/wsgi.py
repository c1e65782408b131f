"""WSGI entry point: ``gunicorn -c gunicorn.conf.py weather_producer.wsgi:app``."""

from weather_producer import create_app

app = create_app()
