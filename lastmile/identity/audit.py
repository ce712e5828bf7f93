"""Identity diagnostics: is the graph healthy, and what changed since the last run?

``lastmile identity audit`` answers the questions a CDP operator asks before trusting
profiles: how many, how big (p50/p99/max identifiers per profile: a growing max is the first
sign of a blob), which identifiers are the most connected, which are shared, which links
were refused and why, and what the last resolution merged or split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lastmile.warehouse import Warehouse


@dataclass
class Audit:
    profiles: int
    identifiers: int
    cluster_p50: float
    cluster_p99: float
    cluster_max: int
    shared_identifiers: dict[str, int]
    refused_by_reason: dict[str, int]
    most_connected: list[dict[str, object]] = field(default_factory=list)
    last_run: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def audit(warehouse: Warehouse, top: int = 10) -> Audit:
    profiles, identifiers, p50, p99, biggest = warehouse.rows("""
        SELECT count(), sum(n), quantileExact(0.5)(n), quantileExact(0.99)(n), max(n)
        FROM (SELECT oneid, count() AS n FROM identity_nodes FINAL WHERE oneid != '' GROUP BY oneid)""")[0]
    shared = dict(warehouse.rows("SELECT id_type, count() FROM identity_nodes FINAL WHERE shared GROUP BY id_type ORDER BY id_type"))
    refused = dict(warehouse.rows("""
        SELECT reason, sum(n) FROM (
            SELECT status AS reason, count() AS n FROM identity_edges FINAL WHERE status != 'used' GROUP BY status
            UNION ALL SELECT reason, count() FROM identity_refusals FINAL GROUP BY reason)
        GROUP BY reason ORDER BY reason"""))
    connected = [
        {"id_type": t, "token": tok[:12] + "…", "links": int(n), "shared": bool(s)}
        for t, tok, n, s in warehouse.rows(f"""
            SELECT n.id_type, n.token, e.links, n.shared FROM (
                SELECT token, count() AS links FROM (
                    SELECT token_a AS token FROM identity_edges FINAL UNION ALL SELECT token_b FROM identity_edges FINAL)
                GROUP BY token ORDER BY links DESC LIMIT {int(top)}) AS e
            INNER JOIN (SELECT token, id_type, shared FROM identity_nodes FINAL) AS n ON n.token = e.token
            ORDER BY e.links DESC, n.token""")
    ]
    runs = warehouse.query("SELECT * FROM identity_runs ORDER BY run DESC LIMIT 1")
    last = dict(zip(runs.column_names, runs.result_rows[0])) if runs.result_rows else {}
    return Audit(
        profiles=int(profiles), identifiers=int(identifiers or 0), cluster_p50=float(p50 or 0), cluster_p99=float(p99 or 0),
        cluster_max=int(biggest or 0), shared_identifiers={k: int(v) for k, v in shared.items()},
        refused_by_reason={k: int(v) for k, v in refused.items()}, most_connected=connected,
        last_run={k: (str(v) if not isinstance(v, (int, float)) else v) for k, v in last.items()},
    )
