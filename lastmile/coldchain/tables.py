"""Warehouse tables of the cold chain, registered as migrations 20–26 when this module is imported.

Every result table is a ``ReplacingMergeTree`` versioned by ``_loaded_at`` whose sorting key
is the identity of the thing it describes (a compartment's window, an excursion by its start,
an order's claim decision). Re-running the job over the same input, replaying a topic or
loading late corrections therefore replaces rows instead of adding them: read with ``FINAL``.
No result column holds a wall-clock time, so a re-run leaves exactly the same rows.
"""

from __future__ import annotations

from lastmile.warehouse.migrations import MIGRATIONS, Migration, register

WINDOWS = """
CREATE TABLE IF NOT EXISTS coldchain_windows (
    window_minutes UInt8 COMMENT 'Tumbling window length: 1 or 5 minutes.',
    compartment_id String,
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    locker_id String,
    community_id String,
    product_class LowCardinality(String),
    readings UInt32 COMMENT 'Distinct readings (re-sent duplicates not counted).',
    duplicates UInt32 COMMENT 'Re-sent copies of a reading seen in the window.',
    temperature_min Float64, temperature_max Float64, temperature_avg Float64,
    humidity_min Nullable(Float64), humidity_max Nullable(Float64), humidity_avg Nullable(Float64),
    door_open_s UInt32 COMMENT 'Seconds the door stood open, each open reading counting for the time since the previous reading (capped).',
    out_of_range_readings UInt32 COMMENT 'Readings outside the range of the compartment''s product class.',
    max_gap_s Nullable(Int64) COMMENT 'Longest wait before a reading in this window; NULL for the first reading of a compartment.',
    last_reading_at DateTime('UTC'),
    _loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_loaded_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_minutes, compartment_id, window_start)
COMMENT 'Per compartment, 1- and 5-minute aggregates of locker telemetry (event time).'
"""

EXCURSIONS = """
CREATE TABLE IF NOT EXISTS coldchain_excursions (
    excursion_id String COMMENT 'EXC-<compartment>-<start, UTC>: stable across re-runs.',
    compartment_id String,
    started_at DateTime('UTC') COMMENT 'First reading out of range.',
    last_out_at DateTime('UTC') COMMENT 'Last reading out of range.',
    ended_at DateTime('UTC') COMMENT 'First reading back in range.',
    last_in_range_at DateTime('UTC') COMMENT 'Last reading in range before the excursion.',
    duration_s UInt32 COMMENT 'Observed out-of-range span: last_out_at - started_at.',
    locker_id String,
    community_id String,
    product_class LowCardinality(String),
    readings UInt32,
    temperature_min Float64, temperature_max Float64, temperature_avg Float64,
    door_open_s UInt32,
    _loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_loaded_at)
ORDER BY (compartment_id, started_at)
COMMENT 'Compartments out of their product class range for at least the minimum duration.'
"""

SILENCES = """
CREATE TABLE IF NOT EXISTS coldchain_silences (
    compartment_id String,
    silent_from DateTime('UTC') COMMENT 'Last reading before the silence.',
    silent_until Nullable(DateTime('UTC')) COMMENT 'Next reading; NULL while the compartment is still silent.',
    silence_s UInt32 COMMENT 'Length of the silence (up to the newest reading of the run while open).',
    locker_id String,
    community_id String,
    product_class LowCardinality(String),
    _loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_loaded_at)
ORDER BY (compartment_id, silent_from)
COMMENT 'Compartments that stopped reporting for longer than the silence threshold.'
"""

LATE = """
CREATE TABLE IF NOT EXISTS coldchain_late_readings (
    reason LowCardinality(String) COMMENT 'beyond_allowed_lateness or invalid_reading.',
    event_id String,
    compartment_id String,
    occurred_at String COMMENT 'As the locker sent it.',
    reading_at Nullable(DateTime('UTC')),
    watermark_at Nullable(DateTime('UTC')) COMMENT 'Event-time watermark when the reading arrived.',
    late_by_s Nullable(Int64) COMMENT 'How far behind the watermark the reading was.',
    locker_id String,
    community_id String,
    product_class LowCardinality(String),
    temperature_c Nullable(Float64),
    detail String COMMENT 'Why it was set aside, in words.',
    _loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_loaded_at)
ORDER BY (reason, compartment_id, event_id, occurred_at)
COMMENT 'Readings the telemetry job set aside (too late for their windows, or unusable), never dropped.'
"""

INCIDENTS = """
CREATE TABLE IF NOT EXISTS cold_chain_incidents (
    incident_id String COMMENT 'The excursion id, or SIL-<compartment>-<start> for a silence.',
    kind LowCardinality(String) COMMENT 'excursion or silence.',
    compartment_id String,
    locker_id String,
    community_id String,
    product_class LowCardinality(String),
    started_at DateTime('UTC'),
    ended_at Nullable(DateTime('UTC')),
    duration_s UInt32,
    severity LowCardinality(String) COMMENT 'minor, major, severe (excursions) or unknown (silence: temperature not seen).',
    temperature_peak Nullable(Float64) COMMENT 'Warmest (or, below range, coldest) reading.',
    deviation_c Nullable(Float64) COMMENT 'Degrees beyond the allowed range at the peak.',
    affected_orders Array(String) COMMENT 'Orders in the compartment during the incident.',
    summary String COMMENT 'What happened, for the people who handle it.',
    _loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_loaded_at)
ORDER BY (incident_id)
COMMENT 'Cold-chain incidents with the orders they touched.'
"""

CLAIMS = """
CREATE TABLE IF NOT EXISTS claim_decisions (
    order_id String,
    incident_id String COMMENT 'The incident the decision is based on (the worst, if several).',
    decision LowCardinality(String) COMMENT 'auto_approved, matched_customer_claim or needs_review.',
    compensation_cny Decimal(12, 2),
    order_total_cny Decimal(12, 2),
    customer_claim_event_id String COMMENT 'The customer''s own temperature claim on this order, if any.',
    customer_claimed_cny Nullable(Decimal(12, 2)),
    severity LowCardinality(String),
    reason String COMMENT 'Why, in words a customer-service agent can repeat.',
    _loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_loaded_at)
ORDER BY (order_id)
COMMENT 'Temperature claim decisions, one per affected order; customer claims are matched, not duplicated.'
"""

RUNS = """
CREATE TABLE IF NOT EXISTS coldchain_runs (
    run_id String,
    started_at DateTime64(3, 'UTC'),
    finished_at DateTime64(3, 'UTC'),
    source String,
    readings UInt64, windows_1m UInt64, windows_5m UInt64, excursions UInt64, silences UInt64,
    incidents UInt64, claims_auto_approved UInt64, claims_matched UInt64, claims_review UInt64,
    late UInt64, invalid UInt64, skipped UInt64,
    seconds Float64, jvm_start_s Float64
)
ENGINE = MergeTree
ORDER BY (started_at, run_id)
COMMENT 'One row per telemetry job run with its counters, for operations.'
"""

_TABLES = [
    (20, "coldchain_windows", WINDOWS),
    (21, "coldchain_excursions", EXCURSIONS),
    (22, "coldchain_silences", SILENCES),
    (23, "coldchain_late_readings", LATE),
    (24, "cold_chain_incidents", INCIDENTS),
    (25, "claim_decisions", CLAIMS),
    (26, "coldchain_runs", RUNS),
]


def _register_all() -> None:
    for version, name, ddl in _TABLES:
        if any(m.version == version for m in MIGRATIONS):
            continue  # imported twice (e.g. reloaded): already registered
        register(Migration(version, name, lambda ddl=ddl: [ddl]))


_register_all()
