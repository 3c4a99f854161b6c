"""The deterministic "why you see this": one relation fact told together with the history item it
is about, put through the same claim check as the model's text. It stands in when the generator
is down, late or wrong, and it is the reason shown to shoppers with no history."""

from __future__ import annotations

from whyrec.core.schema import Fact, FactKind, FactTable
from whyrec.explainer.facts import PAST_TENSE
from whyrec.explainer.grounding import check_grounding

# Strongest first: what the item and the history item share, then what other shoppers did.
RELATION_ORDER = (
    FactKind.SHARED_BRAND,
    FactKind.SHARED_CATEGORY,
    FactKind.SHARED_USE,
    FactKind.BOUGHT_TOGETHER,
    FactKind.VIEWED_TOGETHER,
    FactKind.OFTEN_NEXT,
)


def template_sentence(table: FactTable) -> tuple[str, tuple[Fact, ...]]:
    """A sentence built from the table's strongest relation fact and the history fact of the same
    history item (or, with no relation, from the top history fact alone), and the facts it uses."""
    history = [f for f in table.facts if f.kind is FactKind.HISTORY_ITEM]
    if not history:
        return _no_history_sentence(table)
    subjects = {f.history_item_id: f for f in history}
    relations = [f for f in table.facts if f.kind in RELATION_ORDER and f.history_item_id in subjects]
    if not relations:
        return one_fact_sentence(table)
    drivers = [f.history_item_id for f in history]
    best = min(relations, key=lambda f: (RELATION_ORDER.index(f.kind), drivers.index(f.history_item_id)))
    subject = subjects[best.history_item_id]
    name, verb = subject.value, _verb(subject)
    if best.kind is FactKind.SHARED_BRAND:
        text = f'Like "{name}", which you {verb}, it is made by {best.value}.'
    elif best.kind is FactKind.SHARED_CATEGORY:
        text = f'Like "{name}", which you {verb}, it is in {best.value}.'
    elif best.kind is FactKind.SHARED_USE:
        text = f'Like "{name}", which you {verb}, it is one of the {best.value} products.'
    elif best.kind is FactKind.BOUGHT_TOGETHER:
        who = "other shopper who bought it went" if best.count == 1 else "other shoppers who bought it went"
        text = f'Because you {verb} "{name}": {best.count} {who} on to buy this.'
    elif best.kind is FactKind.VIEWED_TOGETHER:
        who = "other shopper who looked at it went" if best.count == 1 else "other shoppers who looked at it went"
        text = f'Because you {verb} "{name}": {best.count} {who} on to look at this too.'
    else:
        text = f'Because you {verb} "{name}": it is among the items shoppers are most likely to pick next after it.'
    return text, (subject, best)


def one_fact_sentence(table: FactTable) -> tuple[str, tuple[Fact, ...]]:
    """The plainest true reason: the top history item alone ("Because you bought "X"."), or the
    popularity, newness or taste fact when the table has no history item."""
    history = next((f for f in table.facts if f.kind is FactKind.HISTORY_ITEM), None)
    if history is None:
        return _no_history_sentence(table)
    return f'Because you {_verb(history)} "{history.value}".', (history,)


def checked_template(table: FactTable) -> tuple[str, tuple[Fact, ...]]:
    """The first deterministic sentence that passes the check: the template sentence, else the
    one-fact sentence. With neither passing (a table with nothing to say), the text is empty and
    nothing is shown: an unchecked sentence never is."""
    for text, facts in (template_sentence(table), one_fact_sentence(table)):
        if check_grounding(text, table).passed:
            return text, facts
    return "", ()


def _verb(history_fact: Fact) -> str:
    return PAST_TENSE[history_fact.event] if history_fact.event is not None else "bought"


def _no_history_sentence(table: FactTable) -> tuple[str, tuple[Fact, ...]]:
    first: dict[FactKind, Fact] = {}
    for fact in table.facts:
        first.setdefault(fact.kind, fact)
    new, popular, category, taste = (first.get(k) for k in (FactKind.NEW_ITEM, FactKind.POPULAR, FactKind.ITEM_CATEGORY, FactKind.TASTE))
    if taste is not None:
        return f'Picked for your taste: "{taste.value}".', (taste,)
    if new is not None:
        return (f"New in {category.value}.", (new, category)) if category else ("New in this shop.", (new,))
    if popular is not None:
        return "Popular with shoppers in this shop.", (popular,)
    if category:
        return f"Suggested from your recent activity in {category.value}.", (category,)
    return "Suggested from your recent activity.", ()
