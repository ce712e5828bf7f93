"""The full catalogue a window sells: the hand-written base items, their pack and grade variants,
seasonal items and SKUs launched mid-window.

A community front warehouse carries a few hundred SKUs, most of which sell a unit or two a
day while a handful of staples (bok choy, milk, eggs) sell dozens: the variants are generated
from the base items with low ``popularity`` so demand has that long tail. Seasonal dates are
month/day rules resolved in the window's year (Mid-Autumn moves with the lunar calendar, see
:mod:`lastmile.simulator.calendar`), so a window in another autumn gets its own seasons.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

from .calendar import mid_autumn
from .catalog import SKUS, Sku

#: Staples: popularity of the base items that sell the most (every other base item has 1.0).
STAPLES: dict[str, float] = {
    "SK0001": 4.0, "SK0003": 3.0, "SK0004": 2.0, "SK0014": 2.5, "SK0015": 2.0, "SK0021": 4.0,
    "SK0022": 2.0, "SK0024": 3.0, "SK0025": 2.5, "SK0030": 2.0, "SK0031": 2.0, "SK0044": 2.0,
    "SK0049": 2.0, "SK0056": 2.0, "SK0057": 2.0,
}
#: Generated variants of every base item: (name format, English format, price factor, popularity).
VARIANTS: tuple[tuple[str, str, float, float], ...] = (
    ("{name}(家庭装)", "{name_en} (family pack)", 1.8, 0.3),
    ("精选{name}", "Select {name_en}", 1.5, 0.12),
)

# (name, English name, category, origin, price, class, impulse, healthy, popularity,
#  (month, day) from or None, (month, day) until or None)
_SEASONAL = (
    ("美国西北车厘子(晚季)", "Late-season cherries (US Northwest)", "fruit", "美国华盛顿州", 59.9, "chilled",
     False, True, 1.5, None, (9, 13)),
    ("智利车厘子(空运早季)", "Early-season cherries (Chile, air freight)", "fruit", "智利", 79.9, "chilled",
     False, True, 1.5, (10, 19), None),
    ("阳澄湖大闸蟹", "Yangcheng Lake hairy crabs", "seafood", "江苏苏州", 98.0, "chilled",
     False, False, 2.0, (9, 23), None),
    ("太湖大闸蟹", "Taihu hairy crabs", "seafood", "江苏湖州", 78.0, "chilled", False, False, 1.2, (10, 1), None),
    ("临海蜜橘", "Linhai mandarins", "fruit", "浙江临海", 15.8, "ambient", False, True, 1.0, (10, 15), None),
    ("糖炒栗子", "Sugar-roasted chestnuts", "snacks", "河北迁西", 19.9, "ambient", True, False, 0.8, (9, 15), None),
)
#: Mooncakes sell from the window start until Mid-Autumn day, then are gone.
_MOONCAKES = (
    ("鲜肉月饼", "Fresh-meat mooncakes", "dessert", "杭州本地烘焙", 28.0, "chilled", True, False, 2.0),
    ("冰皮月饼", "Snow-skin mooncakes", "dessert", "杭州本地烘焙", 45.0, "chilled", True, False, 1.0),
    ("蛋黄莲蓉月饼", "Lotus-seed yolk mooncakes", "snacks", "广东广州", 38.0, "ambient", True, False, 1.5),
    ("月饼礼盒", "Mooncake gift box", "snacks", "广东广州", 168.0, "ambient", True, False, 0.6),
)
# (name, English name, category, origin, price, class, impulse, healthy, popularity, (month, day) launched)
_LAUNCHES = (
    ("手打牛肉丸", "Hand-made beef balls", "frozen_food", "广东潮汕", 32.0, "frozen", False, False, 0.5, (9, 21)),
    ("蒸蛋糕", "Steamed sponge cake", "bakery", "杭州本地烘焙", 9.9, "ambient", True, False, 0.5, (9, 21)),
    ("酸菜鱼预制菜", "Pickled-cabbage fish kit", "ready_meal", "杭州中央厨房", 35.0, "chilled", True, False, 0.8,
     (9, 28)),
    ("有机娃娃菜", "Organic baby napa cabbage", "vegetables", "云南通海", 6.5, "chilled", False, True, 0.8, (10, 8)),
    ("希腊酸奶", "Greek yogurt", "dairy", "杭州本地牧场", 12.9, "chilled", False, True, 0.6, (10, 8)),
    ("小酥肉", "Crispy pork bites", "frozen_food", "四川成都", 26.0, "frozen", True, False, 0.5, (10, 12)),
    ("鲜切水果杯", "Fresh-cut fruit cup", "fruit", "杭州中央厨房", 15.9, "chilled", True, True, 0.8, (10, 12)),
    ("黑猪五花肉", "Black-pig pork belly", "meat", "浙江金华", 36.0, "chilled", False, False, 0.7, (10, 15)),
    ("低脂鸡胸肠", "Low-fat chicken sausage", "meat", "山东诸城", 16.9, "chilled", False, True, 0.5, (10, 19)),
    ("燕麦拿铁", "Oat latte", "drinks", "上海", 9.9, "ambient", True, False, 0.5, (10, 19)),
    ("椰子水", "Coconut water", "drinks", "海南", 8.9, "ambient", False, True, 0.5, (10, 26)),
    ("羽衣甘蓝", "Kale", "vegetables", "杭州余杭基地", 9.8, "chilled", False, True, 0.5, (10, 26)),
)


def build_catalogue(start: date, extended: bool = True) -> tuple[Sku, ...]:
    """The SKUs of a window starting ``start``: the base items (ids and properties as written
    in :data:`~lastmile.simulator.catalog.SKUS`, staples more popular), then, if ``extended``,
    their variants, the seasonal items and the launches, numbered on from the base items."""
    base = tuple(replace(s, popularity=STAPLES.get(s.sku, 1.0)) for s in SKUS)
    if not extended:
        return base
    year = start.year
    out: list[Sku] = list(base)

    def add(name: str, name_en: str, category: str, origin: str, price: float, cls: str, impulse: bool,
            healthy: bool, popularity: float, **dates: date | None) -> None:
        out.append(Sku(f"SK{len(out) + 1:04d}", name, name_en, category, origin, round(price, 1), cls, impulse,
                       healthy, popularity, **dates))

    for s in base:
        for name, name_en, factor, popularity in VARIANTS:
            add(name.format(name=s.name), name_en.format(name_en=s.name_en), s.category, s.origin,
                s.unit_price * factor, s.product_class, s.is_impulse, s.is_healthy, popularity)
    for name, name_en, cat, origin, price, cls, imp, healthy, pop, since, until in _SEASONAL:
        add(name, name_en, cat, origin, price, cls, imp, healthy, pop,
            available_from=date(year, *since) if since else None,
            available_until=date(year, *until) if until else None)
    festival = mid_autumn(year)
    for name, name_en, cat, origin, price, cls, imp, healthy, pop in _MOONCAKES:
        add(name, name_en, cat, origin, price, cls, imp, healthy, pop,
            available_from=festival - timedelta(days=40), available_until=festival)
    for name, name_en, cat, origin, price, cls, imp, healthy, pop, launched in _LAUNCHES:
        add(name, name_en, cat, origin, price, cls, imp, healthy, pop, launched_on=date(year, *launched))
    return tuple(out)
