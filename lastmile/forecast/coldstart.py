"""Forecasts for series with no history: a new SKU in a community, or a new community.

A SKU that has never sold somewhere is not a SKU nobody wants: its first days look like what
its category sells at that community and like what the same SKU sells at the neighbouring
communities. The cold-start forecast of each hour is the mean of those two estimates (either
alone when the other is unknown), both taken from the model's own forecasts of the series
that have history:

* **category here**: the average forecast per SKU of the same category at the community;
* **neighbours**: the SKU's forecast at other communities, weighted by 1 / (1 + km), so the
  nearest neighbour counts most (all communities alike when distances are unknown).

When neither exists (a new category at a new community) the category's average per SKU over
all communities is used, and failing that the community's average per SKU: a forecast is
never silently zero for a SKU on sale.
"""

from __future__ import annotations

import pandas as pd

from lastmile.forecast.frame import SEPARATOR

VALUES = ("mean", "p50", "p90")


def cold_series(catalogue: pd.DataFrame, communities: list[str], known: set[str]) -> pd.DataFrame:
    """Community × SKU pairs on sale with no history: ``catalogue`` has sku and category."""
    pairs = pd.MultiIndex.from_product([communities, catalogue["sku"].tolist()], names=["community_id", "sku"]).to_frame(index=False)
    pairs["unique_id"] = pairs["community_id"] + SEPARATOR + pairs["sku"]
    return pairs[~pairs["unique_id"].isin(known)].reset_index(drop=True)


def cold_start(forecasts: pd.DataFrame, cold: pd.DataFrame, catalogue: pd.DataFrame,
               distances: pd.DataFrame | None = None) -> pd.DataFrame:
    """Hourly forecasts (unique_id, community_id, sku, ds, mean, p50, p90) for the ``cold`` series.

    ``forecasts`` are the model's (unique_id, ds, mean, p50, p90) for the series with history;
    ``catalogue`` maps sku -> category; ``distances`` has community_id, neighbour_id, km.
    """
    if cold.empty or forecasts.empty:
        return pd.DataFrame(columns=["unique_id", "community_id", "sku", "ds", *VALUES])
    category = catalogue.set_index("sku")["category"]
    fc = forecasts.copy()
    parts = fc["unique_id"].str.split(SEPARATOR, n=1, expand=True)
    fc["community_id"], fc["sku"] = parts[0], parts[1]
    fc["category"] = fc["sku"].map(category)
    by_category_here = fc.groupby(["community_id", "category", "ds"])[list(VALUES)].mean()
    by_category = fc.groupby(["category", "ds"])[list(VALUES)].mean()
    by_community = fc.groupby(["community_id", "ds"])[list(VALUES)].mean()
    km = {}
    if distances is not None and not distances.empty:
        km = {(str(r.community_id), str(r.neighbour_id)): float(r.km) for r in distances.itertuples(index=False)}
    hours = sorted(fc["ds"].unique())
    out = []
    for row in cold.itertuples(index=False):
        cat = category.get(row.sku)
        estimates = []
        if (row.community_id, cat) in by_category_here.index.droplevel("ds"):
            estimates.append(by_category_here.loc[(row.community_id, cat)])
        same_sku = fc[fc["sku"] == row.sku]
        if not same_sku.empty:
            weight = same_sku["community_id"].map(lambda c: 1.0 / (1.0 + km.get((row.community_id, c), km.get((c, row.community_id), 0.0))))
            weighted = same_sku[list(VALUES)].mul(weight, axis=0).groupby(same_sku["ds"]).sum()
            estimates.append(weighted.div(weight.groupby(same_sku["ds"]).sum(), axis=0))
        if not estimates and cat in by_category.index.get_level_values("category"):
            estimates.append(by_category.loc[cat])
        if not estimates and row.community_id in by_community.index.get_level_values("community_id"):
            estimates.append(by_community.loc[row.community_id])
        if not estimates:
            estimates.append(fc.groupby("ds")[list(VALUES)].mean())
        blended = sum(e.reindex(hours) for e in estimates) / len(estimates)
        piece = blended.reset_index().rename(columns={"index": "ds"})
        piece.insert(0, "unique_id", row.unique_id)
        piece.insert(1, "community_id", row.community_id)
        piece.insert(2, "sku", row.sku)
        out.append(piece)
    result = pd.concat(out, ignore_index=True)
    result["p90"] = result[["p90", "p50"]].max(axis=1)
    return result
