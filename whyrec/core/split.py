"""Leave-one-out split: per shopper, the last item is the test target and the second-last the validation target."""

from __future__ import annotations

from dataclasses import dataclass

from whyrec.core.catalog import Catalog


@dataclass(frozen=True)
class Case:
    """Predict `target` from `history` (item ids in time order)."""

    user_id: str
    history: list[str]
    target: str


@dataclass(frozen=True)
class Split:
    train: dict[str, list[str]]  # user -> sequence without its last two items
    valid: list[Case]
    test: list[Case]


def leave_one_out(catalog: Catalog, min_length: int = 3) -> Split:
    """Shoppers with fewer than `min_length` items go entirely to train (nothing to hold out)."""
    train: dict[str, list[str]] = {}
    valid: list[Case] = []
    test: list[Case] = []
    for user in catalog.users:
        sequence = catalog.sequence(user)
        if len(sequence) < min_length:
            train[user] = sequence
            continue
        train[user] = sequence[:-2]
        valid.append(Case(user, sequence[:-2], sequence[-2]))
        test.append(Case(user, sequence[:-1], sequence[-1]))
    return Split(train, valid, test)
