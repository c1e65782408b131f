"""gunicorn entry point: ``gunicorn weather_consumer.wsgi:app``."""

from weather_consumer import create_app

app = create_app()
