"""Cascade's compute side: the specialist, the LLM client, the escalation policy and the Celery tasks."""
