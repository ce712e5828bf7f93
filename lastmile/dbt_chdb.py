"""Let dbt-clickhouse talk to the embedded chDB warehouse, for the plain ``dbt`` CLI too.

This is the one place lastmile reaches into dbt's internals (everything else runs dbt through
its public ``dbtRunner`` or the ``dbt`` command). Written against **dbt-clickhouse 1.9.7**
(:data:`WRITTEN_FOR`); it relies on ``dbt.adapters.clickhouse.httpclient.ChHttpClient._create_client(self,
credentials)`` building the client, and on ``ChClientWrapper.__init__`` filling
``self._conn_settings`` before calling it. ``tests/test_dbt_hook.py`` pins the version and
checks both against the installed adapter (a real ``ChHttpClient`` opens chDB through the
patch), so an upgrade fails there, naming what to re-check.

dbt-clickhouse accepts only the ``http``/``https`` drivers and builds its clickhouse-connect
client in ``ChHttpClient._create_client``. clickhouse-connect itself speaks chDB
(``get_client(dsn="chdb:///dir")``), so the only missing piece is that one method. This
module replaces it with a version that, when the profile's ``host`` is the sentinel
``chdb``, returns a chDB client on ``$LASTMILE_HOME/warehouse`` (the directory every other
lastmile command uses, resolved by :mod:`lastmile.config`), and otherwise calls the
original untouched. A ClickHouse-server target is therefore never affected.

How it gets activated:

* from Python (``lastmile transform``, tests, benchmarks): :func:`patch` before dbtRunner;
* from the plain ``dbt`` command: ``python -m lastmile.dbt_chdb install`` (run by
  ``make install``) writes ``lastmile_dbt_chdb.pth`` into the venv's site-packages. The
  ``.pth`` line only registers a tiny import hook (:func:`install_import_hook`); nothing of
  dbt or chDB is imported until a process imports ``dbt.adapters.clickhouse.httpclient``,
  at which point the method is patched. Every other Python process pays for one entry in
  ``sys.meta_path`` and nothing else.

Why not a custom adapter plugin or a fork: both would have to track dbt-clickhouse's
internals far more closely than one method with a stable signature. Why not always run dbt
in-process: analysts and CI expect ``dbt build`` / ``dbt docs`` to work as documented.

chDB lets one *process* open a directory; inside that process, any number of clients on the
same directory share the engine. So dbt's connections (one per thread) and lastmile's own
:func:`lastmile.warehouse.connect` client coexist in one process, but the plain ``dbt`` CLI
cannot run while another process (a ``lastmile`` command, a notebook) holds the warehouse.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import sysconfig
from pathlib import Path
from typing import Any

#: The dbt-clickhouse release the patch was written and tested against.
WRITTEN_FOR = "1.9.7"
#: Profile ``host`` value that selects the embedded warehouse.
SENTINEL_HOST = "chdb"
#: The module whose import triggers the patch.
TARGET_MODULE = "dbt.adapters.clickhouse.httpclient"
PTH_NAME = "lastmile_dbt_chdb.pth"
#: What the .pth holds: one line, guarded so a broken lastmile install never breaks Python.
PTH_LINE = (
    "import sys; exec(\"try:\\n import lastmile.dbt_chdb as _m; _m.install_import_hook()\\n"
    "except Exception:\\n pass\")\n"
)
#: dbt-clickhouse connection settings that mean something only over HTTP.
_HTTP_ONLY_SETTINGS = ("session_id",)


def installed_version() -> str:
    """The installed dbt-clickhouse release."""
    from importlib import metadata

    return metadata.version("dbt-clickhouse")


def _warehouse_dsn() -> tuple[str, str]:
    """(chDB DSN, database) from lastmile's settings: the same directory every command uses."""
    from lastmile.config import settings

    cfg = settings()
    cfg.warehouse_dir.mkdir(parents=True, exist_ok=True)
    return f"chdb://{cfg.warehouse_dir}", cfg.clickhouse_database


def patch(httpclient_module: Any = None) -> None:
    """Make ``ChHttpClient._create_client`` open chDB when the profile host is ``chdb``. Idempotent."""
    module = httpclient_module or __import__(TARGET_MODULE, fromlist=["ChHttpClient"])
    cls = module.ChHttpClient
    if getattr(cls._create_client, "_lastmile_chdb", False):
        return
    original = cls._create_client

    def _create_client(self: Any, credentials: Any) -> Any:
        if credentials.host != SENTINEL_HOST:
            return original(self, credentials)
        import clickhouse_connect

        dsn, _ = _warehouse_dsn()
        settings = {k: v for k, v in self._conn_settings.items() if k not in _HTTP_ONLY_SETTINGS}
        # No database here: dbt-clickhouse creates the schema if needed, then sets it.
        return clickhouse_connect.get_client(dsn=dsn, settings=settings)

    _create_client._lastmile_chdb = True  # type: ignore[attr-defined]
    cls._create_client = _create_client


class _PatchOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds nothing itself; wraps the real loader of TARGET_MODULE to patch it once loaded."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != TARGET_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        self._real = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._real.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._real.exec_module(module)
        patch(module)


def install_import_hook() -> None:
    """Patch dbt-clickhouse lazily: now if it is already imported, else when it is."""
    if TARGET_MODULE in sys.modules:
        patch(sys.modules[TARGET_MODULE])
        return
    if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def pth_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def install_pth() -> Path:
    """Write the .pth that activates the hook in every process of this environment."""
    path = pth_path()
    path.write_text(PTH_LINE)
    return path


def uninstall_pth() -> bool:
    path = pth_path()
    if path.exists():
        path.unlink()
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["install"]:
        print(f"wrote {install_pth()}")
        return 0
    if args == ["uninstall"]:
        print("removed" if uninstall_pth() else "nothing to remove")
        return 0
    print("usage: python -m lastmile.dbt_chdb install|uninstall", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
