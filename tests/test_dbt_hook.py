"""The chDB hook for dbt-clickhouse: only the sentinel host is redirected, lazily, idempotently."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import types
from pathlib import Path

from lastmile import dbt_chdb
from lastmile.config import Settings


def fake_httpclient() -> types.ModuleType:
    module = types.ModuleType("fake_httpclient")

    class ChHttpClient:
        def __init__(self) -> None:
            self._conn_settings = {"session_id": "dbt::x", "mutations_sync": "2"}

        def _create_client(self, credentials):  # the original: would open an HTTP connection
            return ("http", credentials.host)

    module.ChHttpClient = ChHttpClient
    return module


def test_server_hosts_keep_the_original_client() -> None:
    module = fake_httpclient()
    dbt_chdb.patch(module)
    creds = types.SimpleNamespace(host="clickhouse.internal")
    assert module.ChHttpClient()._create_client(creds) == ("http", "clickhouse.internal")


def test_patch_is_idempotent() -> None:
    module = fake_httpclient()
    dbt_chdb.patch(module)
    first = module.ChHttpClient._create_client
    dbt_chdb.patch(module)
    assert module.ChHttpClient._create_client is first


def test_sentinel_host_opens_the_embedded_warehouse(home: Settings) -> None:
    module = fake_httpclient()
    dbt_chdb.patch(module)
    client = module.ChHttpClient()._create_client(types.SimpleNamespace(host=dbt_chdb.SENTINEL_HOST))
    try:
        assert client.command("SELECT 41 + 1") == 42
        # The HTTP-only session id was dropped, the rest of dbt's settings kept.
        assert client.get_client_setting("mutations_sync") == "2"
        assert client.get_client_setting("session_id") is None
        assert client.path == str(home.warehouse_dir)
    finally:
        client.close()


def test_pth_line_is_guarded_and_hook_patches_dbt_on_import() -> None:
    # A broken environment must never break Python start-up: the line swallows errors.
    exec(compile(dbt_chdb.PTH_LINE.replace("lastmile.dbt_chdb", "lastmile.no_such_module"), "pth", "exec"), {})
    # A clean interpreter: site-packages on the path but no .pth processed (-S), so only an
    # explicit install_import_hook() can patch; without it dbt stays untouched.
    root = str(Path(dbt_chdb.__file__).resolve().parent.parent)
    prelude = f"import sys; sys.path[:0] = [{root!r}, {sysconfig.get_paths()['purelib']!r}];"
    probe = ("import dbt.adapters.clickhouse.httpclient as h;"
             "print(getattr(h.ChHttpClient._create_client, '_lastmile_chdb', False))")
    hooked = prelude + "import lastmile.dbt_chdb as m; m.install_import_hook();" + probe
    for code, expected in ((prelude + probe, "False"), (hooked, "True")):
        out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == expected


def _recheck(what: str) -> str:
    return (f"dbt-clickhouse {dbt_chdb.installed_version()} installed, lastmile.dbt_chdb written for "
            f"{dbt_chdb.WRITTEN_FOR}: re-check {what} (lastmile/dbt_chdb.py says what the patch relies on)")


def test_installed_dbt_clickhouse_is_the_release_the_patch_was_written_for() -> None:
    assert dbt_chdb.installed_version() == dbt_chdb.WRITTEN_FOR, _recheck("the patch, then set WRITTEN_FOR")


def test_dbt_clickhouse_still_builds_its_client_where_the_patch_replaces_it() -> None:
    import inspect

    from dbt.adapters.clickhouse.dbclient import ChClientWrapper
    from dbt.adapters.clickhouse.httpclient import ChHttpClient

    assert list(inspect.signature(ChHttpClient._create_client).parameters) == ["self", "credentials"], _recheck(
        "ChHttpClient._create_client")
    init = inspect.getsource(ChClientWrapper.__init__)
    assert "self._conn_settings" in init and "self._create_client(credentials)" in init, _recheck(
        "ChClientWrapper.__init__ (where the connection settings and the client are made)")
    assert init.index("self._conn_settings") < init.index("self._create_client(credentials)"), _recheck(
        "the order of ChClientWrapper.__init__: settings before the client")


def test_the_real_adapter_client_opens_the_embedded_warehouse(home: Settings) -> None:
    """dbt-clickhouse's own client class, patched, opens chDB and runs its start-up queries on it."""
    import importlib

    from dbt.adapters.clickhouse.credentials import ClickHouseCredentials

    module = importlib.import_module(dbt_chdb.TARGET_MODULE)
    dbt_chdb.patch(module)
    client = module.ChHttpClient(ClickHouseCredentials(host=dbt_chdb.SENTINEL_HOST, schema="lastmile_dbt_check"))
    try:
        assert client.command("SELECT 41 + 1") == 42, _recheck("ChHttpClient.command")
        assert client._client.path == str(home.warehouse_dir)
    finally:
        client.close()
