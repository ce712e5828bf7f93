"""Library internals are reached from one module per library, never from anywhere else.

lastmile bends three libraries where their public API falls short: Feast
(``lastmile/features/feast_adapter.py``), Faust (``lastmile/streaming/faust_compat.py``) and
dbt-clickhouse (``lastmile/dbt_chdb.py``). Each of those modules says why and has a test pinned
to the library's version. This test keeps the rest of the code from growing new reach-ins
that would escape those version tests.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("lastmile", "pipelines", "feature_store", "bench")

#: library -> (its adapter module, what counts as reaching into its internals)
INTERNALS = {
    "Feast": ("lastmile/features/feast_adapter.py", re.compile(
        r"\._get_provider\(|\._get_conn\(|\b_table_id\b|compute_table_id|\._get_client\(|_redis_key\b"
        r"|\bfrom feast\.infra\b|\bimport feast\.infra\b|\.provider\.online_store")),
    "Faust": ("lastmile/streaming/faust_compat.py", re.compile(
        r"_ensure_producer|on_setup_root_logger|BootStrategy|_setup_spinner")),
    "dbt-clickhouse": ("lastmile/dbt_chdb.py", re.compile(r"_create_client|ChHttpClient|_conn_settings|dbt\.adapters")),
}

#: Public imports that happen to live under ``feast.infra``: the ClickHouse data source is
#: imported from there in Feast's own documentation and templates.
PUBLIC = {"from feast.infra.offline_stores.contrib.clickhouse_offline_store.clickhouse_source import ClickhouseSource"}


def test_each_library_is_bent_in_its_adapter_only() -> None:
    stray = []
    for path in sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf8").splitlines(), 1):
            if line.strip() in PUBLIC:
                continue
            for library, (adapter, pattern) in INTERNALS.items():
                if relative != adapter and pattern.search(line):
                    stray.append(f"{relative}:{number}: {library} internals outside {adapter}: {line.strip()}")
    assert not stray, "\n".join(stray)


def test_the_adapters_exist_and_say_which_release_they_were_written_for() -> None:
    for adapter, _ in INTERNALS.values():
        text = (ROOT / adapter).read_text(encoding="utf8")
        assert re.search(r'^WRITTEN_FOR = "\d+\.\d+\.\d+"$', text, re.M), adapter
