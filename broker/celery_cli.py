"""The Celery app for Celery's own command line and Flower, configured from ``CASCADE_*`` at import:

    celery -A cascade.broker.celery_cli inspect ping        # CASCADE_REDIS_URL is all it needs
    celery -A cascade.broker.celery_cli inspect active_queues
    celery -A cascade.broker.celery_cli events              # task events, as Flower shows them

An entry point, like the CLI: it builds ``Settings()`` here, and nothing of Cascade's imports it.
"""

from cascade.broker.celery_app import app, configure
from cascade.broker.settings import Settings

configure(app, Settings())

__all__ = ["app"]
