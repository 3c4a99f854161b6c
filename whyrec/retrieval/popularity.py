"""What a shopper with no usable history is shown: the items most shoppers of this shop took up,
and items that are new in the shop's own data (first seen in its last NEW_DAYS days; only data with
timestamps can say that)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterable

from whyrec.core.catalog import Interaction

NEW_DAYS = 30


@dataclass(frozen=True)
class PopularItem:
    item_id: str
    shoppers: int  # distinct shoppers with any event on it
    first_seen: datetime | None  # its first event in the data, when the data has times
    new: bool  # first seen within NEW_DAYS of the data's latest event


class PopularItems:
    def __init__(self, interactions: Iterable[Interaction], new_days: int = NEW_DAYS):
        shoppers: dict[str, set[str]] = {}
        first_seen: dict[str, datetime] = {}
        for event in interactions:
            shoppers.setdefault(event.item_id, set()).add(event.user_id)
            if event.timestamp is not None and (event.item_id not in first_seen or event.timestamp < first_seen[event.item_id]):
                first_seen[event.item_id] = event.timestamp
        self.total_shoppers = len({u for users in shoppers.values() for u in users})
        cutoff = _days_before(max(first_seen.values()), new_days) if first_seen else None
        self.items = sorted(
            (PopularItem(i, len(users), first_seen.get(i), cutoff is not None and i in first_seen and first_seen[i] >= cutoff) for i, users in shoppers.items()),
            key=lambda p: (-p.shoppers, p.item_id),
        )

    def pick(self, k: int, exclude: set[str] | frozenset[str] = frozenset(), keep: Callable[[str], bool] = lambda _: True) -> list[PopularItem]:
        """The k most popular eligible items, of which up to a third are the most popular new ones."""
        eligible = [p for p in self.items if p.item_id not in exclude and keep(p.item_id)]
        new = [p for p in eligible if p.new][: k // 3]
        popular = [p for p in eligible if p not in new][: k - len(new)]
        return popular + new


def _days_before(when: datetime, days: int) -> datetime:
    try:
        return when - timedelta(days=days)
    except OverflowError:  # data dated within `days` of year 1: every item counts as new
        return datetime.min.replace(tzinfo=when.tzinfo)
