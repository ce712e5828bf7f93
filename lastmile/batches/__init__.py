"""Batch-quality alerts for procurement: a batch whose reviews and claims are much worse than
its SKU's baseline raises one alert (``lastmile.actions`` and ``batch_quality_alerts``).

* :mod:`lastmile.batches.rules` - what a bad signal is and the statistical test (``batch_quality.yml``);
* :mod:`lastmile.batches.monitor` - the state per batch and order, fed by the stream or a replay;
* :mod:`lastmile.batches.alerts` - the warehouse table;
* :mod:`lastmile.batches.stream` - the stream worker's handler;
* :mod:`lastmile.batches.evaluate` - the replay over the warehouse and its score against the truth.
"""
