"""Explanations kept by (fact table, template version, model with its adapter): a hit costs no
generation.

The shopper's state enters through the fact table: its history facts, shared facts, rank and
counterfactual are exactly the part of the shopper's state the text may depend on, so a new
purchase that changes what drove the item changes the key, and one that does not, does not. The
shopper's id is not part of the key: two shoppers with the same evidence read the same sentence.
The in-memory cache is the front of the persistent store (`store.ExplanationStore`) when there is one.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict

from whyrec.core.schema import Explanation, FactTable, fact_to_dict
from whyrec.explainer.store import ExplanationStore


def cache_key(table: FactTable, template_label: str, model_name: str) -> str:
    facts = [fact_to_dict(f) for f in table.facts]
    payload = json.dumps([table.item_id, facts, template_label, model_name], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class ExplanationCache:
    """In memory, least recently used out first, in front of an optional persistent store."""

    def __init__(self, max_size: int = 4096, store: ExplanationStore | None = None):
        self.max_size = max_size
        self.store = store
        self._entries: OrderedDict[str, Explanation] = OrderedDict()
        self._lock = threading.Lock()
        self._put = threading.Condition(self._lock)
        self.puts = 0  # explanations stored so far
        self.hits = 0  # found in memory
        self.store_hits = 0  # found in the store (then kept in memory too)
        self.misses = 0

    def get(self, key: str, count: bool = True) -> Explanation | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += count
                return found
        found = self.store.get(key) if self.store is not None else None
        with self._lock:
            if found is None:
                self.misses += count
                return None
            self.store_hits += count
            self._remember(key, found)
        return found

    def put(self, key: str, explanation: Explanation, item_id: str = "") -> None:
        with self._lock:
            self._remember(key, explanation)
            self.puts += 1
            self._put.notify_all()
        if self.store is not None:
            self.store.put(key, item_id, explanation.prompt_version, explanation.model, explanation)

    def wait_for_put(self, seen: int, timeout_s: float) -> int:
        """Until this cache has stored more than `seen` explanations, or `timeout_s` passes; the
        count now. A page waiting for its texts wakes when one lands instead of polling (texts
        written by another process are only seen in the store, so a waiter looks there after
        each timeout)."""
        with self._lock:
            self._put.wait_for(lambda: self.puts > seen, max(0.0, timeout_s))
            return self.puts

    def _remember(self, key: str, explanation: Explanation) -> None:
        if self.max_size <= 0:
            return
        self._entries[key] = explanation
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.store_hits + self.misses
        return (self.hits + self.store_hits) / lookups if lookups else 0.0

    def stats(self) -> dict:
        return {"entries": len(self._entries), "hits": self.hits, "store_hits": self.store_hits, "misses": self.misses, "hit_rate": round(self.hit_rate, 4)}
