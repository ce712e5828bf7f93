"""Warehouse access: one clickhouse-connect client for embedded chDB or a ClickHouse server."""

from lastmile.warehouse.client import Warehouse, WarehouseError, close_all, connect, quote_ident
from lastmile.warehouse.migrations import migrate

__all__ = ["Warehouse", "WarehouseError", "close_all", "connect", "migrate", "quote_ident"]
