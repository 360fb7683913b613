"""Ordinaut project package: settings, Celery app, URLs, ASGI router and cross-cutting pieces."""

from .celery import app as celery_app

__all__ = ("celery_app",)
