"""lastmile.streaming.faust_compat against the installed faust-streaming: every hook it relies on.

The module was written for one faust-streaming release; these tests pin the version and check
each thing it changes or reaches into, with a message that says what to re-check. No broker.
"""

from __future__ import annotations

import asyncio
import inspect

import faust
import pytest

from lastmile.streaming import faust_compat


def _recheck(what: str) -> str:
    return (f"faust-streaming {faust_compat.installed_version()} installed, faust_compat written for "
            f"{faust_compat.WRITTEN_FOR}: re-check {what} (lastmile/streaming/faust_compat.py says why each is there)")


def test_installed_faust_is_the_release_the_hooks_were_written_for() -> None:
    assert faust_compat.installed_version() == faust_compat.WRITTEN_FOR, _recheck("every hook, then set WRITTEN_FOR")


@pytest.fixture()
def app():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield faust_compat.BatchApp("compat-check", broker="kafka://127.0.0.1:1", web_enabled=False)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_batch_app_starts_no_consumer_of_its_own(app) -> None:
    """The worker's services include Faust's producer but none of its consumer machinery."""
    boot = app.boot_strategy
    assert isinstance(boot, faust_compat.BatchBoot), _recheck("App.BootStrategy")
    assert list(boot.kafka_consumer()) == [], _recheck("BootStrategy.enable_kafka_consumer")
    assert list(boot.kafka_producer()), _recheck("BootStrategy.kafka_producer (the producer must stay)")
    names = {type(s).__name__ for s in boot.server()}
    assert not names & {"Consumer", "Fetcher", "TableManager"}, _recheck(f"the services Faust starts: {sorted(names)}")


def test_quiet_worker_overrides_the_hook_that_installs_the_spinner() -> None:
    hook = inspect.signature(faust.Worker.on_setup_root_logger)
    assert list(hook.parameters) == ["self", "logger", "level"], _recheck("Worker.on_setup_root_logger")
    assert "_setup_spinner_handler" in inspect.getsource(faust.Worker.on_setup_root_logger), _recheck(
        "where Worker installs its spinner handler")
    assert faust_compat.QuietWorker.on_setup_root_logger is not faust.Worker.on_setup_root_logger


def test_kafka_producer_is_faust_producers_aiokafka_producer(app) -> None:
    from aiokafka import AIOKafkaProducer

    producer = app.producer
    assert callable(getattr(producer, "_ensure_producer", None)), _recheck("Producer._ensure_producer")
    assert list(inspect.signature(producer.key_partition).parameters) == ["topic", "key"], _recheck(
        "Producer.key_partition")
    producer._producer = AIOKafkaProducer.__new__(AIOKafkaProducer)  # what start() leaves there
    assert faust_compat.kafka_producer(producer) is producer._producer, _recheck("Producer._producer")
    for method in ("create_batch", "send_batch", "partitions_for"):
        assert callable(getattr(AIOKafkaProducer, method)), f"aiokafka's AIOKafkaProducer.{method}"
