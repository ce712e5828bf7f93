"""The real-time path: Kafka topics, the development broker, the producer, and the worker's
engine-agnostic parts (batch sink, handlers, the actions' shape). ``pipelines/faust_worker.py`` wires
them onto faust-streaming; ``lastmile/cli.py`` holds the commands (broker, produce, stream)."""
