"""Everything the stream worker changes in Faust, in one module.

Written against **faust-streaming 0.11.3** (:data:`WRITTEN_FOR`); ``tests/test_faust_compat.py``
checks that version and each hook below, so an upgrade fails there, naming what changed.
``pipelines/faust_worker.py`` uses Faust through these names and nothing else of its internals.

What Faust does in lastmile: it runs the worker process (lifecycle, signals, graceful stop,
logging), owns the producer behind the quarantine and actions topics, and runs the timers.
What it does not: consume the event topics (an aiokafka batch consumer,
:class:`lastmile.streaming.consumer.BatchConsumer`, runs as a Faust service instead), nor
agents, tables, offset tracking or leader election. Three changes make that so:

1. :class:`BatchApp` / :class:`BatchBoot`: ``App.BootStrategy`` with
   ``enable_kafka_consumer = False`` (the extension point Faust's ``BootStrategy`` documents),
   so Faust starts no consumer of its own and joins no consumer group. Faust's agents hand
   records over one at a time (~200 µs of Python each, a ~2,000 events/s ceiling); the
   warehouse wants large batches.
2. :class:`QuietWorker`: overrides ``Worker.on_setup_root_logger`` to drop the terminal
   spinner. To animate it Faust sets the *root* logger to DEBUG and attaches a handler that
   advances it on every record (``Worker._setup_spinner_handler``), and leaves it so after
   start-up. Every library's ``log.debug`` then builds a LogRecord - aiokafka logs on every
   fetch and every message it sends - which was ~6 % of the worker's GIL time in
   bench/stream.py. Without a spinner the root logger keeps the ``--log-level`` asked for.
3. :func:`kafka_producer`: the aiokafka producer behind Faust's producer
   (``Producer._ensure_producer()``, private), so the worker can publish one record batch per
   partition (aiokafka's public ``create_batch``/``send_batch``) instead of one ``send`` per
   message; partitions still come from Faust's own ``key_partition``.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.app.base import BootStrategy

#: The faust-streaming release these hooks were written and tested against.
WRITTEN_FOR = "0.11.3"


def installed_version() -> str:
    """The installed faust-streaming release."""
    from importlib import metadata

    return metadata.version("faust-streaming")


class BatchBoot(BootStrategy):
    """Faust's boot without its Kafka consumer: the event topics are read by BatchConsumer."""

    enable_kafka_consumer = False


class BatchApp(faust.App):
    """A Faust app that starts no consumer of its own (see :class:`BatchBoot`)."""

    BootStrategy = BatchBoot


class QuietWorker(faust.Worker):
    """faust's Worker without its terminal spinner, so the root logger keeps the level asked for."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)


def kafka_producer(producer: Any) -> Any:
    """The started aiokafka ``AIOKafkaProducer`` behind Faust's ``app.producer``."""
    return producer._ensure_producer()
