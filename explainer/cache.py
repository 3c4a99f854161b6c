"""Explanations kept by (shopper state, item, template version, model): a hit costs no generation.

The shopper state enters through the fact table: its history facts, shared facts, rank and
counterfactual are exactly the part of the shopper's state the text may depend on, so a new
purchase that changes what drove the item changes the key, and one that does not, does not.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

from whyrec.schema import Explanation, FactTable


def cache_key(table: FactTable, template_label: str, model_name: str) -> str:
    facts = [[f.fact_id, f.kind.value, f.text, f.value, f.about_history] for f in table.facts]
    payload = json.dumps([table.user_id, table.item_id, facts, template_label, model_name], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class ExplanationCache:
    """In-memory, least recently used out first."""

    def __init__(self, max_size: int = 4096):
        self.max_size = max_size
        self._entries: OrderedDict[str, Explanation] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Explanation | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: str, explanation: Explanation) -> None:
        if self.max_size <= 0:
            return
        self._entries[key] = explanation
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict:
        return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses}
