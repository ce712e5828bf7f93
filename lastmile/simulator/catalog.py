"""Static master data: the SKU catalogue, place names, merchants, persona tastes and rhythms.

Kept apart from the generators so that what the world *is* (a Hangzhou district's fresh-food
assortment, who likes what, when people order) can be read and tuned in one place, and so the
generators stay about *how* to sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

PERSONAS = ("young_night", "senior_health", "family", "impulse")
AGE_BANDS = ("18-35", "36-59", "60+")
PRODUCT_CLASSES = ("chilled", "frozen", "ambient")

CITY = "杭州"
DISTRICTS = ("西湖区", "拱墅区", "上城区", "滨江区", "余杭区", "萧山区")

COMMUNITY_NAMES = (
    "翠苑一区", "金色家园", "阳光花园", "桂花城", "和睦新村", "采荷人家", "朝晖九区", "文鼎苑",
    "嘉绿苑", "古荡新村", "紫金港花园", "春江花月", "东方润园", "星洲花园", "望江家园", "景芳三区",
    "三墩新苑", "西溪诚园", "德胜新村", "闸弄口小区", "九堡家园", "滨盛苑", "良渚文化村", "湘湖人家",
)


#: Shelf life, days from the 05:00 receipt, per (product class, category); ``SHELF_LIFE_BY_NAME``
#: overrides it for items that keep shorter or longer than their category (leafy greens, cut fruit).
SHELF_LIFE_DAYS: dict[tuple[str, str], float] = {
    ("chilled", "vegetables"): 3.0, ("chilled", "fruit"): 4.0, ("chilled", "meat"): 3.0,
    ("chilled", "seafood"): 2.0, ("chilled", "dairy"): 7.0, ("chilled", "dessert"): 3.0,
    ("chilled", "eggs"): 21.0, ("chilled", "tofu"): 3.0, ("chilled", "ready_meal"): 1.0,
    ("ambient", "bakery"): 3.0, ("ambient", "vegetables"): 14.0, ("ambient", "fruit"): 14.0,
    ("ambient", "snacks"): 180.0, ("ambient", "drinks"): 270.0, ("ambient", "tea"): 365.0,
    ("ambient", "grain"): 365.0,
}
#: Frozen goods keep for months whatever their category.
FROZEN_SHELF_LIFE_DAYS = 180.0
SHELF_LIFE_BY_NAME: dict[str, float] = {
    "上海青": 1.5, "菠菜": 1.0, "生菜": 1.5, "有机娃娃菜": 2.0, "羽衣甘蓝": 2.0,  # leafy greens
    "草莓": 3.0, "蓝莓": 4.0, "阳光玫瑰葡萄": 5.0, "猕猴桃": 5.0, "西瓜切块": 1.0, "鲜切水果杯": 1.0,
    "胡萝卜": 7.0,
}
#: Shelf life at or under which a SKU counts as fresh (perishable) in fill-rate and spoilage figures.
FRESH_MAX_SHELF_LIFE_DAYS = 7.0


@dataclass(frozen=True)
class Sku:
    """One stock keeping unit. ``is_impulse``/``is_healthy`` are ground truth for spending health.

    ``popularity`` scales how often shoppers pick it against others of its category (staples
    high, pack-size variants low: demand is skewed); the dates bound when it can be bought
    (``available_from``/``available_until`` for seasonal items, ``launched_on`` for new ones).
    """

    sku: str
    name: str
    name_en: str
    category: str
    origin: str
    unit_price: float
    product_class: str
    is_impulse: bool = False
    is_healthy: bool = False
    popularity: float = 1.0
    available_from: date | None = None
    available_until: date | None = None
    launched_on: date | None = None

    @property
    def shelf_life_days(self) -> float:
        if self.name in SHELF_LIFE_BY_NAME:
            return SHELF_LIFE_BY_NAME[self.name]
        if self.product_class == "frozen":
            return FROZEN_SHELF_LIFE_DAYS
        return SHELF_LIFE_DAYS.get((self.product_class, self.category), 30.0)

    @property
    def is_fresh(self) -> bool:
        return self.shelf_life_days <= FRESH_MAX_SHELF_LIFE_DAYS

    @property
    def unit_cost(self) -> float:
        """Purchase cost per unit: 60-70 % of the list price, fixed per SKU number."""
        share = 0.60 + 0.01 * (int(self.sku[2:]) * 37 % 11)
        return round(self.unit_price * share, 2)

    def available_on(self, day: date) -> bool:
        """Whether shoppers can buy it on ``day`` (in season and launched)."""
        if self.launched_on is not None and day < self.launched_on:
            return False
        if self.available_from is not None and day < self.available_from:
            return False
        return self.available_until is None or day <= self.available_until


def _sku(n: int, name: str, name_en: str, category: str, origin: str, price: float, cls: str,
         impulse: bool = False, healthy: bool = False) -> Sku:
    return Sku(f"SK{n:04d}", name, name_en, category, origin, price, cls, impulse, healthy)


SKUS: tuple[Sku, ...] = (
    # chilled: fresh produce, meat, seafood, dairy, ready meals
    _sku(1, "上海青", "Bok choy", "vegetables", "山东寿光", 3.5, "chilled", healthy=True),
    _sku(2, "西兰花", "Broccoli", "vegetables", "云南通海", 6.8, "chilled", healthy=True),
    _sku(3, "番茄", "Tomato", "vegetables", "新疆昌吉", 5.9, "chilled", healthy=True),
    _sku(4, "黄瓜", "Cucumber", "vegetables", "山东寿光", 4.2, "chilled", healthy=True),
    _sku(5, "菠菜", "Spinach", "vegetables", "上海崇明", 4.5, "chilled", healthy=True),
    _sku(6, "生菜", "Lettuce", "vegetables", "杭州余杭基地", 3.9, "chilled", healthy=True),
    _sku(7, "胡萝卜", "Carrot", "vegetables", "内蒙古乌兰察布", 3.2, "chilled", healthy=True),
    _sku(8, "香菇", "Shiitake", "vegetables", "浙江庆元", 8.8, "chilled", healthy=True),
    _sku(9, "阳光玫瑰葡萄", "Shine Muscat grapes", "fruit", "云南建水", 29.9, "chilled"),
    _sku(10, "草莓", "Strawberries", "fruit", "辽宁丹东", 25.8, "chilled"),
    _sku(11, "蓝莓", "Blueberries", "fruit", "云南澄江", 19.9, "chilled", healthy=True),
    _sku(12, "猕猴桃", "Kiwi fruit", "fruit", "陕西周至", 12.8, "chilled", healthy=True),
    _sku(13, "西瓜切块", "Watermelon cuts", "fruit", "杭州萧山", 9.9, "chilled", impulse=True),
    _sku(14, "猪里脊", "Pork tenderloin", "meat", "浙江金华", 22.8, "chilled"),
    _sku(15, "鸡胸肉", "Chicken breast", "meat", "山东诸城", 12.9, "chilled", healthy=True),
    _sku(16, "牛腱子", "Beef shank", "meat", "内蒙古锡林郭勒", 58.0, "chilled"),
    _sku(17, "羊排", "Lamb ribs", "meat", "内蒙古呼伦贝尔", 68.0, "chilled"),
    _sku(18, "鲈鱼", "Sea bass", "seafood", "浙江舟山", 32.0, "chilled", healthy=True),
    _sku(19, "基围虾", "Greasyback shrimp", "seafood", "广东湛江", 45.0, "chilled"),
    _sku(20, "麻辣小龙虾", "Spicy crayfish", "seafood", "江苏盱眙", 59.0, "chilled", impulse=True),
    _sku(21, "鲜牛奶", "Fresh milk", "dairy", "杭州本地牧场", 11.5, "chilled", healthy=True),
    _sku(22, "低糖酸奶", "Low-sugar yogurt", "dairy", "内蒙古呼和浩特", 8.9, "chilled", healthy=True),
    _sku(23, "芝士蛋糕", "Cheesecake", "dessert", "杭州本地烘焙", 26.0, "chilled", impulse=True),
    _sku(24, "土鸡蛋", "Free-range eggs", "eggs", "浙江安吉", 19.8, "chilled", healthy=True),
    _sku(25, "嫩豆腐", "Silken tofu", "tofu", "杭州本地豆制品厂", 3.5, "chilled", healthy=True),
    _sku(26, "深夜卤味拼盘", "Late-night braised platter", "ready_meal", "湖南长沙", 39.9, "chilled", impulse=True),
    _sku(27, "烤串套餐", "Skewer pack", "ready_meal", "杭州中央厨房", 45.0, "chilled", impulse=True),
    _sku(28, "深夜炸鸡", "Late-night fried chicken", "ready_meal", "杭州中央厨房", 36.0, "chilled", impulse=True),
    _sku(29, "轻食沙拉", "Salad bowl", "ready_meal", "杭州中央厨房", 25.0, "chilled", healthy=True),
    _sku(30, "便当套餐", "Bento box", "ready_meal", "杭州中央厨房", 22.0, "chilled"),
    # frozen
    _sku(31, "三鲜水饺", "Three-delicacy dumplings", "frozen_food", "杭州本地", 24.9, "frozen"),
    _sku(32, "黑芝麻汤圆", "Black sesame tangyuan", "frozen_food", "浙江宁波", 15.9, "frozen"),
    _sku(33, "冷冻虾仁", "Frozen shrimp meat", "seafood", "广东湛江", 39.0, "frozen", healthy=True),
    _sku(34, "冰淇淋桶", "Ice cream tub", "dessert", "杭州本地", 35.0, "frozen", impulse=True),
    _sku(35, "眼肉牛排", "Rib-eye steak", "meat", "澳大利亚进口", 68.0, "frozen"),
    _sku(36, "冷冻带鱼", "Frozen hairtail", "seafood", "浙江舟山", 29.0, "frozen", healthy=True),
    _sku(37, "速冻披萨", "Frozen pizza", "frozen_food", "杭州本地", 32.0, "frozen", impulse=True),
    _sku(38, "手工馄饨", "Handmade wontons", "frozen_food", "杭州本地", 19.9, "frozen"),
    # ambient: pantry, health tea, snacks, drinks, bakery
    _sku(39, "菊花茶", "Chrysanthemum tea", "tea", "浙江桐乡", 18.0, "ambient", healthy=True),
    _sku(40, "枸杞", "Goji berries", "tea", "宁夏中宁", 35.0, "ambient", healthy=True),
    _sku(41, "红枣", "Red dates", "tea", "新疆若羌", 28.0, "ambient", healthy=True),
    _sku(42, "养生八宝茶", "Eight-treasure health tea", "tea", "甘肃兰州", 26.0, "ambient", healthy=True),
    _sku(43, "普洱茶饼", "Pu'er tea cake", "tea", "云南普洱", 68.0, "ambient", healthy=True),
    _sku(44, "五常大米", "Wuchang rice", "grain", "黑龙江五常", 59.0, "ambient", healthy=True),
    _sku(45, "沁州小米", "Qinzhou millet", "grain", "山西沁县", 16.8, "ambient", healthy=True),
    _sku(46, "燕麦片", "Rolled oats", "grain", "河北张家口", 19.9, "ambient", healthy=True),
    _sku(47, "五谷杂粮礼包", "Mixed grains pack", "grain", "黑龙江", 39.9, "ambient", healthy=True),
    _sku(48, "荞麦面", "Buckwheat noodles", "grain", "内蒙古赤峰", 12.0, "ambient", healthy=True),
    _sku(49, "薯片", "Potato chips", "snacks", "上海", 8.5, "ambient", impulse=True),
    _sku(50, "辣条", "Spicy gluten strips", "snacks", "湖南平江", 5.0, "ambient", impulse=True),
    _sku(51, "每日坚果", "Daily nuts", "snacks", "浙江临安", 49.0, "ambient", healthy=True),
    _sku(52, "巧克力礼盒", "Chocolate box", "snacks", "比利时进口", 58.0, "ambient", impulse=True),
    _sku(53, "零食大礼包", "Snack gift box", "snacks", "福建晋江", 69.0, "ambient", impulse=True),
    _sku(54, "瓶装奶茶", "Bottled milk tea", "drinks", "杭州", 18.0, "ambient", impulse=True),
    _sku(55, "精酿啤酒", "Craft beer", "drinks", "山东青岛", 12.0, "ambient", impulse=True),
    _sku(56, "苏打气泡水", "Sparkling water", "drinks", "浙江千岛湖", 4.5, "ambient"),
    _sku(57, "全麦吐司", "Whole-wheat toast", "bakery", "杭州本地烘焙", 12.8, "ambient", healthy=True),
    _sku(58, "牛角包", "Croissant", "bakery", "杭州本地烘焙", 9.9, "ambient", impulse=True),
    _sku(59, "土豆", "Potatoes", "vegetables", "甘肃定西", 3.0, "ambient", healthy=True),
    _sku(60, "烟台苹果", "Yantai apples", "fruit", "山东烟台", 13.8, "ambient", healthy=True),
)

#: Merchant focus -> categories it fulfils. Every category maps to exactly one focus.
MERCHANT_FOCUS: dict[str, tuple[str, ...]] = {
    "produce": ("vegetables", "fruit", "eggs", "tofu"),
    "meat": ("meat",),
    "seafood": ("seafood",),
    "dairy_bakery": ("dairy", "bakery", "dessert"),
    "deli": ("ready_meal",),
    "frozen": ("frozen_food",),
    "pantry": ("tea", "grain"),
    "snacks_drinks": ("snacks", "drinks"),
}
CATEGORY_FOCUS: dict[str, str] = {c: f for f, cats in MERCHANT_FOCUS.items() for c in cats}
MERCHANT_NAMES: dict[str, tuple[str, ...]] = {
    "produce": ("鲜丰果蔬", "田园小菜铺", "四季鲜生"),
    "meat": ("老王肉铺", "金华鲜肉坊"),
    "seafood": ("舟山渔港", "海鲜码头"),
    "dairy_bakery": ("晨光乳品烘焙", "麦香坊"),
    "deli": ("深夜食堂", "邻里熟食"),
    "frozen": ("冰鲜冻品仓", "速冻之家"),
    "pantry": ("五谷粮油", "养生茶铺"),
    "snacks_drinks": ("零食很忙", "街角便利"),
}

#: Persona -> weight per category (unlisted categories get 0).
CATEGORY_TASTE: dict[str, dict[str, float]] = {
    "young_night": {"ready_meal": 3.0, "snacks": 2.0, "drinks": 1.6, "fruit": 1.0, "dairy": 0.8,
                    "frozen_food": 0.8, "dessert": 0.8, "meat": 0.4, "bakery": 0.6, "vegetables": 0.3,
                    "seafood": 0.3},
    "senior_health": {"vegetables": 3.0, "tea": 1.6, "grain": 1.6, "fruit": 1.0, "tofu": 1.0, "eggs": 0.9,
                      "meat": 0.8, "seafood": 0.6, "dairy": 0.5, "frozen_food": 0.3, "bakery": 0.2},
    "family": {"vegetables": 2.2, "meat": 1.6, "fruit": 1.6, "dairy": 1.0, "seafood": 0.9, "frozen_food": 0.9,
               "grain": 0.7, "eggs": 0.6, "snacks": 0.5, "bakery": 0.5, "tofu": 0.5, "ready_meal": 0.3,
               "dessert": 0.3, "drinks": 0.3, "tea": 0.2},
    "impulse": {"snacks": 2.6, "ready_meal": 2.2, "drinks": 1.8, "dessert": 1.4, "seafood": 1.0, "fruit": 0.8,
                "frozen_food": 0.8, "meat": 0.5, "bakery": 0.6, "dairy": 0.4, "vegetables": 0.2},
}
#: Extra weight of impulse SKUs per persona (the over-consumption signal).
IMPULSE_BIAS: dict[str, float] = {"young_night": 1.5, "senior_health": 0.3, "family": 0.8, "impulse": 3.0}

#: Basket product class mix per persona: chilled, frozen, ambient.
CLASS_MIX: dict[str, tuple[float, float, float]] = {
    "young_night": (0.55, 0.15, 0.30),
    "senior_health": (0.60, 0.05, 0.35),
    "family": (0.60, 0.20, 0.20),
    "impulse": (0.45, 0.20, 0.35),
}

#: Channel mix per persona: mini_program, group_chat, store.
CHANNEL_MIX: dict[str, tuple[float, float, float]] = {
    "young_night": (0.85, 0.10, 0.05),
    "senior_health": (0.25, 0.55, 0.20),
    "family": (0.55, 0.30, 0.15),
    "impulse": (0.80, 0.15, 0.05),
}

#: Relative order activity per persona (the impulse persona buys much more often).
ACTIVITY: dict[str, float] = {"young_night": 1.0, "senior_health": 0.9, "family": 1.25, "impulse": 2.6}

#: Basket lines (min, max) per persona; the impulse persona's grow week by week.
BASKET_LINES: dict[str, tuple[int, int]] = {
    "young_night": (1, 3), "senior_health": (2, 4), "family": (3, 7), "impulse": (2, 6),
}

#: Hour-of-day ordering propensity per persona (index = hour 0..23).
HOUR_CURVE: dict[str, tuple[float, ...]] = {
    "young_night": (0.9, 0.5, 0.2, 0.05, 0.02, 0.02, 0.05, 0.2, 0.3, 0.3, 0.3, 0.6,
                    0.7, 0.4, 0.3, 0.3, 0.4, 0.6, 0.8, 0.9, 1.2, 1.6, 1.9, 1.6),
    "senior_health": (0.01, 0.01, 0.01, 0.02, 0.05, 0.2, 0.9, 1.5, 1.6, 1.3, 1.0, 0.6,
                      0.3, 0.4, 0.7, 0.8, 0.9, 0.6, 0.4, 0.5, 0.4, 0.15, 0.05, 0.02),
    "family": (0.05, 0.02, 0.01, 0.01, 0.02, 0.05, 0.1, 0.4, 0.5, 0.5, 0.6, 0.8,
               1.0, 0.7, 0.5, 0.5, 0.7, 1.0, 1.1, 1.3, 1.4, 1.0, 0.5, 0.2),
    "impulse": (1.0, 0.7, 0.4, 0.2, 0.1, 0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.8,
                0.9, 0.7, 0.6, 0.6, 0.7, 0.8, 0.9, 1.0, 1.3, 1.6, 1.8, 1.5),
}
#: Day-of-week multipliers, Monday first (weekends and Friday busier).
WEEKDAY_FACTOR = (1.0, 0.95, 0.9, 1.0, 1.2, 1.2, 1.1)
#: The group-buying rhythm: everyone tops up before the weekend cut-off on Friday 16:00-18:00,
#: and Wednesday mid-afternoon is the quietest hour of the week.
FRIDAY_PEAK = (4, (16, 17), 3.0)
WEDNESDAY_LULL = (2, (15,), 0.15)

#: Pickup slots (start hour, end hour) and persona preference over them.
SLOTS = ((8, 10), (10, 12), (12, 14), (16, 18), (18, 20), (20, 22))
SLOT_PREF: dict[str, tuple[float, ...]] = {
    "young_night": (0.02, 0.05, 0.08, 0.15, 0.35, 0.35),
    "senior_health": (0.40, 0.35, 0.10, 0.10, 0.05, 0.0),
    "family": (0.10, 0.15, 0.10, 0.25, 0.30, 0.10),
    "impulse": (0.05, 0.05, 0.10, 0.20, 0.30, 0.30),
}

REVIEW_TEXT: dict[str, dict[str, tuple[str, ...]]] = {
    "zh": {
        "good": ("菜很新鲜，下次还买", "团长很热心，取货方便", "冷柜很干净，东西都是冰的", "性价比高", "准时到柜，很满意"),
        "not_cold": ("冷链有问题，拿到的时候都不冰了", "冻品化了，希望改进", "柜子里温度不对，东西变质了"),
        "late": ("送晚了，等了很久", "没有按时到柜"),
        "damaged": ("包装破损了", "鸡蛋碎了好几个"),
        "meh": ("还可以", "一般般", "分量有点少"),
    },
    "en": {
        "good": ("Fresh and on time, thanks!", "Leader is super helpful", "Great value, will order again"),
        "not_cold": ("Items arrived warm, cold chain broken", "Ice cream had melted", "Not cold at all when I picked it up"),
        "late": ("Delivery was late", "Goods were not in the locker at my slot"),
        "damaged": ("Package was damaged", "Some eggs were broken"),
        "meh": ("OK", "Average", "Portions a bit small"),
    },
}
