"""``lastmile stocking``: make the plan for the next delivery, and send it to suppliers.

:func:`register` adds the commands to the main command line (:mod:`lastmile.cli` passes its
error handling and consoles in, so this module does not import it back); errors follow its
rules (one line, exit code 2 for bad input, 1 for a failing system).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from lastmile.config import settings


def register(app: typer.Typer, friendly: Callable[..., Any], bad_input: type[Exception], console: Console, err: Console) -> None:
    """Add ``lastmile stocking plan|export`` to ``app``."""
    stocking_app = typer.Typer(help="What each front warehouse should order: the plan, its CSV export and purchase orders.",
                               no_args_is_help=True)

    @stocking_app.command("plan")
    @friendly
    def plan_cmd(as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON.")) -> None:
        """Plan the next delivery from the newest demand forecast and the stock counts; write stocking_plan."""
        from lastmile.stocking.plan import make_plan, read_plan
        from lastmile.warehouse import connect

        cfg = settings()
        warehouse = connect(cfg)
        report = make_plan(cfg, warehouse)
        if as_json:
            console.print_json(json.dumps(report.as_dict()))
            return
        console.print(f"stocking plan for the delivery of {report.delivery_at:%Y-%m-%d %H:%M}: {report.rows:,} rows over "
                      f"{report.warehouses} front warehouses, {report.order_units:,} units to order, {report.pooled_units:,} "
                      f"covered by neighbours ({report.plan_version})", highlight=False, soft_wrap=True)
        biggest = sorted(read_plan(warehouse, cfg.business_tz), key=lambda r: -int(r["order_qty"]))[:5]
        for row in biggest:
            console.print(f"  {row['warehouse_id']} {row['sku']}: {row['reason']}", highlight=False, soft_wrap=True)
        for note in report.notes:
            err.print(f"note: {note}", highlight=False, soft_wrap=True)

    @stocking_app.command("export")
    @friendly
    def export_cmd(
        out: Optional[Path] = typer.Option(None, "--out", help="CSV file to write (default: standard output)."),
        delivery: Optional[str] = typer.Option(None, "--delivery", help="Local date of the delivery (default: the newest planned)."),
        community: Optional[str] = typer.Option(None, "--community", help="Only this community's front warehouse."),
        include_zero: bool = typer.Option(False, "--all", help="Also list SKUs with nothing to order."),
        kafka: bool = typer.Option(False, "--kafka", help="Also publish one purchase order per row to lastmile.purchase_orders."),
    ) -> None:
        """The plan of one delivery as CSV for suppliers and farms (and, with --kafka, as purchase orders)."""
        from lastmile.stocking import outlets
        from lastmile.stocking.plan import read_plan
        from lastmile.warehouse import connect

        if delivery is not None:
            try:
                date.fromisoformat(delivery)
            except ValueError:
                raise bad_input(f"--delivery must be a date (YYYY-MM-DD), not {delivery!r}") from None
        cfg = settings()
        warehouse = connect(cfg)
        rows = read_plan(warehouse, cfg.business_tz, community, delivery)
        if not rows:
            raise bad_input("no stocking plan" + (f" for {community}" if community else "")
                            + (f" on {delivery}" if delivery else "") + ": run `lastmile stocking plan` first")
        names = ({str(s): str(n) for s, n in warehouse.rows("SELECT sku, name FROM ref_skus")}
                 if "ref_skus" in warehouse.tables() else {})
        if out is None:
            outlets.write_csv(rows, sys.stdout, names, include_zero)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w", encoding="utf-8", newline="") as stream:
                written = outlets.write_csv(rows, stream, names, include_zero)
            err.print(f"{written:,} order lines for the delivery of {rows[0]['delivery_at'][:10]} written to {out}",
                      highlight=False, soft_wrap=True)
        if kafka:
            from lastmile.streaming.broker import bootstrap

            try:
                sent = outlets.publish(bootstrap(cfg), rows, names)
            except ConnectionError as exc:
                err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            err.print(f"{sent:,} purchase orders published to {outlets.PURCHASE_ORDERS_TOPIC}", highlight=False, soft_wrap=True)

    app.add_typer(stocking_app, name="stocking")
