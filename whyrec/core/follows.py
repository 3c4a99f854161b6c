"""Who went on to what: the shop's counts that collaborative reasons state ("12 shoppers who bought
X went on to buy this"). Retrieval fuses them into candidate scores and the explainer's fact tables
cite them, so they are counted here, below both."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable

from whyrec.core.catalog import EventKind, Interaction


class FollowCounts:
    """How many shoppers went from one item on to another: for an ordered pair (a, b), the shoppers
    who bought a and then bought b among their next `window` purchases, and the shoppers who did
    anything with a (looked at it at least) and then with b among their next `window` items. Each
    shopper counts once per pair, at the first time they met each item. These are the numbers a
    collaborative reason states ("12 shoppers who bought X went on to buy this")."""

    def __init__(self, interactions: Iterable[Interaction], window: int = 3):
        purchases: dict[str, list[str]] = defaultdict(list)
        touched: dict[str, list[str]] = defaultdict(list)
        for event in interactions:
            touched[event.user_id].append(event.item_id)
            if event.kind is EventKind.PURCHASE:
                purchases[event.user_id].append(event.item_id)
        self.window = window
        self.bought = self._count(purchases.values(), window)
        self.viewed = self._count(touched.values(), window)

    @staticmethod
    def _count(sequences: Iterable[list[str]], window: int) -> dict[str, Counter]:
        counts: dict[str, Counter] = defaultdict(Counter)
        for sequence in sequences:
            firsts = list(dict.fromkeys(sequence))
            for i, a in enumerate(firsts):
                counts[a].update(firsts[i + 1 : i + 1 + window])
        return counts

    def bought_after(self, first: str, then: str) -> int:
        """Shoppers who bought `first` and then `then` within their next `window` purchases."""
        row = self.bought.get(first)
        return row[then] if row else 0

    def viewed_after(self, first: str, then: str) -> int:
        """Shoppers who did anything with `first` and then with `then` within their next `window` items."""
        row = self.viewed.get(first)
        return row[then] if row else 0
