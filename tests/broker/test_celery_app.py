from cascade.broker.celery_app import CascadeCelery, QueueName, configure
from cascade.broker.settings import Settings


def test_each_queue_has_its_own_exchange_and_routing_key() -> None:
    app = configure(CascadeCelery("t"), Settings(redis_url="redis://127.0.0.1:6379/15"))
    queues = app.amqp.queues
    for name in QueueName:
        assert queues[name.value].exchange.name == name.value
        assert queues[name.value].routing_key == name.value


def test_reliability_settings() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6379/15", visibility_timeout=7200)
    conf = configure(CascadeCelery("t"), settings).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 7200
