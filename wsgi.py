"""WSGI entry point for gunicorn: `gunicorn wsgi:app`."""

from voiceforge import create_app

app = create_app()
