"""Cascade's queue side: settings, job model, job store in Redis, Celery app, submission and CLI."""
