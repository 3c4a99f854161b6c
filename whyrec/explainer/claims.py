"""The claims a text makes, each matched to the one fact that states it about the same things.

A word check cannot see that "Because you looked at the Trailhead bottle, another Stridewell
product" is false when Stridewell is what the shopper's *running shoe* shares with the item: every
word is in the facts. So the text is read as claims with subjects:

- **history**: a history item named with what the shopper did ("you bought X", "the X you looked
  at"); matched by that item's history fact with the same event. A taste summary named with a
  purchase verb is a taste fact treated as an item, and fails.
- **relation**: a brand, category or use said to be shared ("another Lumora product", "also in
  Desk Lamps", "Like X, it is made by B"), about the history item named nearest to it; matched by
  that item's shared_brand / shared_category / shared_use fact with the same value. The same value
  shared with a *different* history item is a splice, and the reason names both facts.
- **together**: "N (other) shoppers who bought X went on to buy this": N and the verbs must be
  those of X's bought_together (or viewed_together, for "looked at") fact.
- **next**: "... pick next after X": X's often_next fact (or a together fact for X).
- **history words**: the words naming a history item come from that item's own facts, so the
  recommended item's colour or another history item's brand is not given to it.
- **taste**, **rank**, **popular** claims, matched to taste, rank / counterfactual and popular facts.

Each Claim records the words that make it, its subject, and the fact that matches it or why none does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from whyrec.core.schema import Fact, FactKind, FactTable
from whyrec.explainer.lexicon import CONNECTIVE_STEMS, EVENT_VERBS, EVENT_WORDS, VERB_EVENTS, content_stems, name_tokens, norm, sentences, stem

_TOKEN = re.compile(r"#?[A-Za-z0-9]+(?:['’][A-Za-z]+)*|[,;:!?()]|\s[-–—]\s")
_QUOTED = re.compile(r'"([^"]+)"')
_BOUNDARY = frozenset({",", ";", ":", "!", "?", "(", ")"})
# Words that make a brand, category or use a shared one when they sit just before it (or, for
# "too" and "as well", just after): "another Lumora lamp", "also in Desk Lamps", "Lumora too".
_CUES_BEFORE = frozenset({"also", "another", "other", "else", "same", "more", "similar", "similarly", "both"})
_CUES_AFTER = frozenset({"too", "well"})
# A cue that turns to the item instead ("we also suggest this Lumora lamp") is not about sharing.
_OFFER_VERBS = frozenset({"suggest", "suggested", "recommend", "recommended", "here", "try", "consider", "picked", "pick", "show", "see", "found"})
# Words after a history item's name where the sentence turns from it.
_TURNS = frozenset({"so", "we", "and", "because", "you", "your", "which", "that", "who", "this", "these", "it", "is", "are", "was", "were", "has", "have", "shopper", "shoppers", "other", "like", "but", "or", "then", "since", "after", "went"})
# What may follow "another" without naming a kind of product.
_GENERIC = frozenset({"one", "item", "product", "option", "pick", "choice", "idea", "suggestion", "thing", "something", "recommendation", "find"})
_SHOPPERS = r"(?:other\s+)?(?:shoppers?|customers?|people|buyers?|others)"
_COUNT = re.compile(r"\b(\d[\d,]*)\s+" + _SHOPPERS + r"\b", re.IGNORECASE)
_WHO = re.compile(r"\b" + _SHOPPERS + r"\s+(?:who|that)\b", re.IGNORECASE)
_POPULAR = re.compile(r"\b(\d[\d,]*)\s+of\s+(?:the\s+)?(\d[\d,]*)\s+shoppers\b", re.IGNORECASE)
# "... went on to buy / look at / pick <object>": the object of what the counted shoppers did.
_WENT_ON = re.compile(r"\bwent\s+on\s+to\s+(?:buy|purchase|order|look\s+at|view|pick|get|choose)(?:\s+the)?\b", re.IGNORECASE)
_PURCHASE_WORDS = frozenset({"bought", "buy", "buying", "purchased", "purchase", "ordered", "order"})
_VIEW_WORDS = frozenset({"looked", "look", "looking", "viewed", "view", "saw", "clicked"})
_SHARED_KINDS = (FactKind.SHARED_BRAND, FactKind.SHARED_CATEGORY, FactKind.SHARED_USE)
_TOGETHER_KINDS = (FactKind.BOUGHT_TOGETHER, FactKind.VIEWED_TOGETHER)


@dataclass(frozen=True)
class Claim:
    kind: str  # history, taste, relation, together, next, history_words, rank, popular
    words: str  # the words of the text that make the claim
    subject: str | None  # the history item (or taste fact) it is about; None: the item or the shop
    value: str  # what is claimed: the event, the brand / category / use, the number
    fact_id: str | None  # the one fact that states it; None when no fact does
    problem: str = ""  # why no fact matches (a splice names both facts)

    @property
    def matched(self) -> bool:
        return self.fact_id is not None


@dataclass
class _Token:
    raw: str
    stem: str
    boundary: bool


@dataclass
class _Mention:
    start: int
    end: int  # inclusive token indexes
    subjects: list[Fact]  # history or taste facts (more than one when the words fit several)
    size: int = 0  # title words matched


class _Table:
    """The facts grouped by subject, as the claim finder asks for them."""

    def __init__(self, table: FactTable):
        self.facts = table.facts
        self.history = [f for f in table.facts if f.kind is FactKind.HISTORY_ITEM]
        self.taste = [f for f in table.facts if f.kind is FactKind.TASTE]
        self.title = next((f for f in table.facts if f.kind is FactKind.ITEM_TITLE), None)
        own = content_stems(self.title.value) if self.title else set()
        own |= {s for f in table.facts if f.kind is FactKind.ITEM_BRAND for s in content_stems(f.value)}
        titles = {f.fact_id: content_stems(f.value) for f in [*self.history, *self.taste]}
        self.all_words = {f.fact_id: set(name_tokens(f.value)) for f in [*self.history, *self.taste]}
        self.stems = titles
        # Words that single out one history item: in no other history title and not the item's own.
        self.unique = {
            fid: words - own - set().union(*(other for oid, other in titles.items() if oid != fid)) for fid, words in titles.items()
        }
        self.distinctive = {fid: words - own for fid, words in titles.items()}
        self.item_stems = own
        self.names = {norm(f.value) for f in table.facts if f.kind in (FactKind.ITEM_TITLE, FactKind.HISTORY_ITEM, FactKind.TASTE)}
        self.item_words = {s for f in table.facts if f.kind in (FactKind.ITEM_TITLE, FactKind.ITEM_CATEGORY, FactKind.ITEM_BRAND) for s in content_stems(f.value)}
        # Everything each history item's own facts say of it: its title and what it shares with the item.
        self.own_words = {
            h.fact_id: titles[h.fact_id] | {s for f in self.relations(h.history_item_id) for s in content_stems(f.value)} for h in self.history
        }

    def relations(self, history_item_id: str | None, kinds=(*_SHARED_KINDS, *_TOGETHER_KINDS, FactKind.OFTEN_NEXT)) -> list[Fact]:
        return [f for f in self.facts if f.kind in kinds and f.history_item_id == history_item_id]

    def history_fact(self, history_item_id: str) -> Fact | None:
        return next((f for f in self.history if f.history_item_id == history_item_id), None)

    def shared_values(self) -> list[Fact]:
        """Brand, category and use facts, shared ones and the item's own, as values a text may state."""
        kinds = (*_SHARED_KINDS, FactKind.ITEM_BRAND, FactKind.ITEM_CATEGORY)
        return [f for f in self.facts if f.kind in kinds and content_stems(f.value)]


def find_claims(text: str, table: FactTable) -> list[Claim]:
    """Every claim the text makes, in text order, each matched to a fact or told why not."""
    facts = _Table(table)
    claims: list[Claim] = []
    previous: _Mention | None = None  # "it" in a second sentence refers to the first one's item
    for sentence in sentences(text.strip()):
        tokens = _tokens(sentence)
        # A quoted name of the table is one name: a value word inside it ("... Duplex and Wireless")
        # is part of the title, not a stated brand, category or use.
        quoted = [(_token_at(sentence, tokens, m.start(1)), _token_at(sentence, tokens, m.end(1)) - 1, norm(m.group(1))) for m in _QUOTED.finditer(sentence) if norm(m.group(1)) in facts.names]
        values = [(span, f) for span, f in _value_spans(tokens, facts) if not any(a <= span[0] and span[-1] <= b for a, b, _ in quoted)]
        mentions = _mentions(tokens, facts)
        # And a quoted history title names that item, whatever other titles share its words.
        for a, b, name in quoted:
            exact = [f for f in [*facts.history, *facts.taste] if norm(f.value) == name]
            if exact:
                mentions = sorted([m for m in mentions if m.end < a or m.start > b] + [_Mention(a, b, exact, len(facts.stems[exact[0].fact_id]))], key=lambda m: m.start)
        like = _like_subject(tokens, mentions)
        # "something else in Coffee Beans", "Like X, it is one of the desk lamp products": a stated
        # brand, category or use is a value even where its words would also name a history item.
        stated = [span for span, _ in values if _cued(tokens, span[0], span[-1]) or (like and span[0] > like.end)]
        mentions = [m for m in mentions if m is like or not any(m.start >= c[0] and m.end <= c[-1] for c in stated)]
        named = {i for m in mentions for i in range(m.start, m.end + 1)} | _item_name_tokens(tokens, facts, values)
        claims += _history_claims(tokens, mentions, facts)
        claims += _relation_claims(tokens, values, like, mentions, named, facts, previous)
        claims += _together_claims(sentence, tokens, mentions, named, facts, previous)
        claims += _rank_claims(_tokens(_QUOTED.sub(lambda m: " " if norm(m.group(1)) in facts.names else m.group(0), sentence)), facts)
        previous = mentions[-1] if mentions else previous
    return claims


def _tokens(sentence: str) -> list[_Token]:
    tokens = []
    for match in _TOKEN.finditer(sentence):
        raw = match.group(0).strip()
        if raw:
            tokens.append(_Token(raw, stem(raw.lower().lstrip("#")), raw in _BOUNDARY or raw in "-–—"))
    return tokens


def first_problem(claims: list[Claim]) -> Claim | None:
    return next((c for c in claims if not c.matched), None)


# ---- who the text talks about ----


def _mentions(tokens: list[_Token], facts: _Table) -> list[_Mention]:
    """Where the text names a history item or taste summary: a run of consecutive words from its
    title (joined by "with", "of", "and", a comma... only where the title goes on after them),
    with at least two of its words or one that only this history item has, and at least one that
    the recommended item's own name does not have. Where two subjects fit the same words equally
    well, the mention is of either."""
    found: list[tuple[int, int, int, Fact]] = []
    for fact in [*facts.history, *facts.taste]:
        stems = facts.stems[fact.fact_id]
        for start, end in _runs(tokens, stems, facts.all_words[fact.fact_id]):
            matched = {tokens[i].stem for i in range(start, end + 1)} & stems
            distinctive = facts.distinctive[fact.fact_id]
            # Three words or more that the recommended item's name has too still name the history
            # item when the shopper is said to have it ("you bought the 6061 Aluminum Round Rod").
            if distinctive and not matched & distinctive:
                if len(matched) < 3 or _shopper_verb(tokens, _Mention(start, end, [fact]), facts.all_words[fact.fact_id]) is None:
                    continue
            if len(matched) >= min(2, len(stems)) or matched & facts.unique[fact.fact_id]:
                found.append((start, end, len(matched), fact))
    mentions: list[_Mention] = []
    for start, end, size, fact in sorted(found, key=lambda f: (-f[2], f[0])):
        overlap = next((m for m in mentions if start <= m.end and end >= m.start), None)
        if overlap is None:
            mentions.append(_Mention(start, end, [fact], size))
        elif size == overlap.size and (start, end) == (overlap.start, overlap.end):
            overlap.subjects.append(fact)
    for mention in mentions:
        # Of titles with the same words, the one whose words come in the text's order is meant.
        words = [t.stem for t in tokens[mention.start : mention.end + 1] if not t.boundary]
        in_order = [s for s in mention.subjects if _in_order(words, name_tokens(s.value))] or mention.subjects
        # And of those, the one the words name most completely ("Aaa 00" rather than "Aaa 0 00").
        cover = {s.fact_id: len(set(words) & facts.stems[s.fact_id]) / max(1, len(facts.stems[s.fact_id])) for s in in_order}
        mention.subjects = [s for s in in_order if cover[s.fact_id] == max(cover.values())]
    return sorted(mentions, key=lambda m: m.start)


def _in_order(words: list[str], title: list[str]) -> bool:
    it = iter(title)
    return all(any(w == t for t in it) for w in words)


# "and" is left out: "You bought A and B" joins two names far more often than a title holds it.
_RUN_JOINERS = frozenset({"with", "for", "of", "&", "in", "x", "by", "the", "on", ",", "(", ")", "-"})


def _runs(tokens: list[_Token], stems: set[str], title: set[str]) -> list[tuple[int, int]]:
    """Maximal runs of the title's words (`title`: all of them, small ones too), starting and
    ending on a content word (`stems`), a joiner allowed only between two of them."""
    runs, i = [], 0
    while i < len(tokens):
        if tokens[i].stem not in stems or tokens[i].stem in CONNECTIVE_STEMS:
            i += 1
            continue
        end = i
        j = i + 1
        while j < len(tokens):
            if tokens[j].stem in stems and not tokens[j].boundary:
                end = j
            elif tokens[j].raw.lower() not in _RUN_JOINERS and (tokens[j].stem not in title or tokens[j].raw.lower() == "and"):
                break
            j += 1
        runs.append((i, end))
        i = end + 1
    return runs


def _clusters(positions: list[int], gap: int = 3) -> list[list[int]]:
    clusters: list[list[int]] = []
    for p in positions:
        if clusters and p - clusters[-1][-1] <= gap:
            clusters[-1].append(p)
        else:
            clusters.append([p])
    return clusters


def _item_name_tokens(tokens: list[_Token], facts: _Table, values: list[tuple[list[int], Fact]]) -> set[int]:
    """Tokens that name the recommended item (two of its title's words or more in a run), except a
    run that is exactly a brand, category or use value ("desk lamp"), which names no one item."""
    if facts.title is None:
        return set()
    stems = content_stems(facts.title.value)
    # The brand alone ("made by Anderson Metals") names the maker, not the item.
    brand = {s for f in facts.facts if f.kind is FactKind.ITEM_BRAND for s in content_stems(f.value)}
    positions = [i for i, t in enumerate(tokens) if not t.boundary and t.stem in stems and t.stem not in CONNECTIVE_STEMS]
    value_runs = {tuple(span) for span, _ in values}
    return {
        i
        for c in _clusters(positions, gap=1)
        if len({tokens[j].stem for j in c}) >= min(2, len(stems)) and {tokens[j].stem for j in c} - brand and tuple(range(c[0], c[-1] + 1)) not in value_runs
        for i in range(c[0], c[-1] + 1)
    }


def _subject_at(position: int, mentions: list[_Mention], previous: _Mention | None) -> _Mention | None:
    """The history item a claim at `position` is about: the one named nearest before it in the
    sentence, else the one named after it, else the last one of the sentence before."""
    before = [m for m in mentions if m.end < position]
    if before:
        return before[-1]
    after = [m for m in mentions if m.start > position]
    return after[0] if after else previous


# ---- what the shopper did ----


def _history_claims(tokens: list[_Token], mentions: list[_Mention], facts: _Table) -> list[Claim]:
    claims = []
    for mention in mentions:
        name = " ".join(t.raw for t in tokens[mention.start : mention.end + 1])
        verb = _shopper_verb(tokens, mention, set().union(*(facts.stems[s.fact_id] for s in mention.subjects)))
        ids = [s.history_item_id for s in mention.subjects if s.kind is FactKind.HISTORY_ITEM]
        taste = [s for s in mention.subjects if s.kind is FactKind.TASTE]
        if verb is None:
            if taste and not ids:
                claims.append(Claim("taste", name, taste[0].fact_id, taste[0].value, taste[0].fact_id))
            continue
        event = VERB_EVENTS[EVENT_VERBS[verb]]
        said = f"you {verb}{' at' if verb == 'looked' else ' on' if verb == 'clicked' else ''} {name}"
        if not ids:
            claims.append(Claim("history", said, taste[0].fact_id, event.value, None,
                                f'treats a summary of your taste ({taste[0].fact_id}: "{taste[0].value}") as an item you {verb}'))
            continue
        match = next((s for s in mention.subjects if s.kind is FactKind.HISTORY_ITEM and s.event in (event, None)), None)
        if match is not None:
            claims.append(Claim("history", said, match.history_item_id, event.value, match.fact_id))
        else:
            recorded = mention.subjects[0]
            claims.append(Claim("history", said, recorded.history_item_id, event.value, None,
                                f'says you {verb} "{recorded.value}", but {recorded.fact_id} records that you {EVENT_WORDS[recorded.event]} it'))
        claims += _history_word_claims(tokens, mention, facts, name)
    return claims


def _shopper_verb(tokens: list[_Token], mention: _Mention, title: set[str]) -> str | None:
    """The event verb the text gives the shopper for this mention: "you bought [the] X", "the X
    (that / which) you bought", "your purchase of X". Verbs of other shoppers ("shoppers who
    bought X") are not the shopper's."""
    low = [t.raw.lower() for t in tokens]
    for i in range(mention.start - 1, max(-1, mention.start - 6), -1):
        if tokens[i].boundary:
            break
        if low[i] in EVENT_VERBS:
            if any(low[j] in ("you", "you've", "you’ve", "your") for j in range(max(0, i - 3), i)) and not any(low[j] in ("who", "shoppers", "customers", "people", "others") for j in range(max(0, i - 3), i)):
                return low[i]
            break  # another shopper's verb: the shopper's own may still follow ("..., which you bought")
        if low[i] == "your" and i + 1 < len(low) and low[i + 1] in ("purchase", "order"):
            return "bought"
    # After the name: the rest of a long title first, then "(,) (that / which) you (have) bought".
    i = mention.end + 1
    while i < len(tokens) and (tokens[i].stem in title or tokens[i].raw.isdigit() or tokens[i].raw in "()"):
        i += 1
    for i in range(i, min(len(tokens), i + 4)):
        if low[i] in ("you", "you've", "you’ve") and i + 1 < len(low):
            nxt = low[i + 1] if low[i + 1] not in ("have", "already", "recently", "previously", "just") else (low[i + 2] if i + 2 < len(low) else "")
            return nxt if nxt in EVENT_VERBS else None
        if tokens[i].boundary and low[i] != ",":
            break
    return None


def _history_word_claims(tokens: list[_Token], mention: _Mention, facts: _Table, name: str) -> list[Claim]:
    """The words right before the name that describe the history item ("the black Brewvale
    grinder") must be its own: a colour of the recommended item or another item's brand is not."""
    subjects = [s for s in mention.subjects if s.kind is FactKind.HISTORY_ITEM]
    if not subjects:
        return []
    described = []
    title = set().union(*(facts.all_words[s.fact_id] for s in subjects))
    i = mention.start - 1
    while i >= 0 and not tokens[i].boundary and (tokens[i].stem not in CONNECTIVE_STEMS or tokens[i].stem in title) and not tokens[i].raw.startswith("#"):
        described.insert(0, tokens[i])
        i -= 1
    # And the words right after it, up to where the sentence turns ("... Tubing in 1/4 ID x 3/8 OD, we suggest").
    trailing = []
    for t in tokens[mention.end + 1 :]:
        if t.boundary or t.raw.lower() in _OFFER_VERBS or t.raw.lower() in _TURNS or t.raw.startswith("#"):
            break
        trailing.append(t)
    words = [t for t in [*described, *tokens[mention.start : mention.end + 1], *trailing] if not t.boundary and t.stem not in CONNECTIVE_STEMS]
    own = set().union(*(facts.own_words[s.fact_id] for s in subjects))
    foreign = [t for t in words if t.stem not in own]
    if not foreign:
        return []
    word = foreign[0]
    others = [h for h in facts.history if h not in subjects and word.stem in facts.own_words[h.fact_id]]
    if others:
        return [Claim("history_words", " ".join(t.raw for t in words), subjects[0].history_item_id, word.raw, None,
                      f'splices two facts: "{word.raw}" is given to "{subjects[0].value}" ({subjects[0].fact_id}), but it belongs to "{others[0].value}" ({others[0].fact_id})')]
    item_fact = next((f for f in facts.facts if not f.about_history and word.stem in content_stems(f"{f.value} {f.text}")), None)
    where = f"the recommended item's ({item_fact.fact_id})" if item_fact else "in no fact about it"
    return [Claim("history_words", " ".join(t.raw for t in words), subjects[0].history_item_id, word.raw, None,
                  f'gives "{word.raw}" to "{subjects[0].value}" ({subjects[0].fact_id}); that word is {where}')]


# ---- what the item shares with a history item ----


def _value_spans(tokens: list[_Token], facts: _Table) -> list[tuple[list[int], Fact]]:
    """Where the text states a brand, category or use of the table, longest values first, no overlaps."""
    stems = [t.stem for t in tokens]
    spans: list[tuple[list[int], Fact]] = []
    taken: set[int] = set()
    for fact in sorted(facts.shared_values(), key=lambda f: -len(name_tokens(f.value))):
        value = name_tokens(fact.value)
        for i in range(len(stems) - len(value) + 1):
            span = list(range(i, i + len(value)))
            if stems[i : i + len(value)] == value and not taken & set(span):
                spans.append((span, fact))
                taken |= set(span)
    return sorted(spans, key=lambda s: s[0][0])


def _relation_claims(
    tokens: list[_Token], values: list[tuple[list[int], Fact]], like: _Mention | None, mentions: list[_Mention], named: set[int], facts: _Table, previous: _Mention | None
) -> list[Claim]:
    claims, covered = [], set()
    for span, value_fact in values:
        if set(span) <= named or not (like or _cued(tokens, span[0], span[-1])):
            continue
        if not _cued(tokens, span[0], span[-1]) and span[0] > 0 and tokens[span[0] - 1].raw.lower() in ("this", "these"):
            continue  # "Like X, this desk organizer is ...": the item's own noun, not a shared value
        covered |= set(span)
        subject = like or _subject_at(span[0], mentions, previous)
        claims.append(_match_relation(value_fact.value, " ".join(tokens[i].raw for i in span), subject, facts, _said_as(tokens, span[0])))
    claims += _another_claims(tokens, mentions, named | covered, facts, previous)
    return claims


def _cued(tokens: list[_Token], start: int, end: int) -> bool:
    """A sharing word sits just before the value (with no turn to the item in between) or just after it."""
    for i in range(start - 1, max(-1, start - 5), -1):
        if tokens[i].boundary and tokens[i].raw != ",":
            break
        word = tokens[i].raw.lower()
        if word in _OFFER_VERBS:
            return False
        if word in _CUES_BEFORE:
            return True
    after = [tokens[i].raw.lower() for i in range(end + 1, min(len(tokens), end + 4)) if not tokens[i].boundary]
    return bool(after[:2] and (after[0] in _CUES_AFTER or after[:2] == ["as", "well"] or (after[0] == "like" and after[1] in ("this", "it", "that", "these", "the"))))


def _like_subject(tokens: list[_Token], mentions: list[_Mention]) -> _Mention | None:
    """"Like X, ..." / "just like X": the sentence says the item is like that history item."""
    for mention in mentions:
        before = [t.raw.lower() for t in tokens[max(0, mention.start - 3) : mention.start] if not t.boundary]
        if "like" in before[-3:] and not any(w in ("you", "would", "might", "may") for w in before[-2:]):
            return mention
    # "X ..., and like it, this ...", "X is, like this one, in ...": the history item named before.
    for i, token in enumerate(tokens):
        after = tokens[i + 1].raw.lower() if i + 1 < len(tokens) else ""
        if token.raw.lower() == "like" and after in ("it", "them", "this", "these", "that"):
            before = [m for m in mentions if m.end < i]
            if before:
                return before[-1]
    return None


def _said_as(tokens: list[_Token], start: int) -> tuple[FactKind, ...]:
    """What the words before a value make of it: a maker ("made by", "from"), a category ("in",
    "category"), or either."""
    before = [t.raw.lower() for t in tokens[max(0, start - 3) : start] if not t.boundary]
    if before and before[-1] in ("by", "from") or "brand" in before or "maker" in before:
        return (FactKind.SHARED_BRAND,)
    if before and before[-1] == "in" or "category" in before:
        return (FactKind.SHARED_CATEGORY,)
    return _SHARED_KINDS


def _match_relation(value: str, words: str, subject: _Mention | None, facts: _Table, kinds: tuple[FactKind, ...] = _SHARED_KINDS) -> Claim:
    target = name_tokens(value)
    # The words as written count too: "Noodler's" is the brand fact's value even where the span was
    # first read as the use fact's "noodlers".
    said = (target, name_tokens(words))
    shared = [f for f in facts.facts if f.kind in kinds and name_tokens(f.value) in said]
    ids = [s.history_item_id for s in subject.subjects if s.history_item_id] if subject else [f.history_item_id for f in shared]
    match = next((f for f in shared if f.history_item_id in ids), None)
    subject_id = ids[0] if ids else None
    if match is not None:
        return Claim("relation", words, match.history_item_id, value, match.fact_id)
    if subject is None or not ids:
        return Claim("relation", words, None, value, None, f'says the item shares "{value}" with something you have, but no history item shares it')
    named = facts.history_fact(subject_id)
    if named is not None and words.islower() and set(target) <= facts.stems.get(named.fact_id, set()) and set(target) <= facts.item_words:
        # "the same binder": both names say it (the history item's title and the item's facts);
        # a category name ("in Inkjet Printers") is a category claim, matched by a category fact.
        return Claim("relation", words, subject_id, value, named.fact_id)
    if shared:
        other = shared[0]
        owner = facts.history_fact(other.history_item_id)
        return Claim("relation", words, subject_id, value, None,
                     f'splices two facts: "{words}" is said of "{named.value}" ({named.fact_id}), but {other.fact_id} says the item shares "{value}" with "{owner.value if owner else other.history_item_id}"')
    item_fact = next((f for f in facts.facts if f.kind in (FactKind.ITEM_BRAND, FactKind.ITEM_CATEGORY) and name_tokens(f.value) == target), None)
    return Claim("relation", words, subject_id, value, None,
                 f'says "{named.value}" ({named.fact_id}) shares "{value}" with the item, but "{value}" is only the recommended item\'s ({item_fact.fact_id if item_fact else "no fact"})')


def _another_claims(tokens: list[_Token], mentions: list[_Mention], skip: set[int], facts: _Table, previous: _Mention | None) -> list[Claim]:
    """"another X" / "other X" says the shopper has an X: X must be the named history item's."""
    claims = []
    for i, token in enumerate(tokens):
        if token.raw.lower() not in ("another", "other") or i + 1 >= len(tokens):
            continue
        run = []
        for t in tokens[i + 1 : i + 4]:
            if t.boundary or t.stem in CONNECTIVE_STEMS or t.stem in _GENERIC:
                break
            run.append(t)
        idx = [i + 1 + k for k in range(len(run))]
        if not run or any(j in skip for j in idx) or run[0].raw.lower() in ("shopper", "shoppers", "customer", "customers", "people"):
            continue
        subject = _subject_at(i, mentions, previous)
        ids = [s for s in (subject.subjects if subject else facts.history) if s.kind is FactKind.HISTORY_ITEM]
        if not ids:
            continue
        own = set().union(*(facts.own_words[s.fact_id] for s in ids))
        foreign = [t for t in run if t.stem not in own]
        words = f"{token.raw} " + " ".join(t.raw for t in run)
        if not foreign:
            claims.append(Claim("relation", words, ids[0].history_item_id, " ".join(t.raw for t in run), ids[0].fact_id))
            continue
        others = [h for h in facts.history if h not in ids and foreign[0].stem in facts.own_words[h.fact_id]]
        if others:
            problem = f'splices two facts: "{words}" is said of "{ids[0].value}" ({ids[0].fact_id}), but "{foreign[0].raw}" belongs to "{others[0].value}" ({others[0].fact_id})'
        else:
            problem = f'"{words}" says you have a {foreign[0].raw} product, but "{ids[0].value}" ({ids[0].fact_id}) is not one'
        claims.append(Claim("relation", words, ids[0].history_item_id, foreign[0].raw, None, problem))
    return claims


# ---- what other shoppers did ----


def _together_claims(sentence: str, tokens: list[_Token], mentions: list[_Mention], named: set[int], facts: _Table, previous: _Mention | None) -> list[Claim]:
    claims = []
    popular = [(m.start(), m) for m in _POPULAR.finditer(sentence)]
    for _, m in popular:
        n = int(m.group(1).replace(",", ""))
        fact = next((f for f in facts.facts if f.kind is FactKind.POPULAR and f.count == n and str(int(m.group(2).replace(",", ""))) in f.text), None)
        claims.append(Claim("popular", m.group(0), None, str(n), fact.fact_id if fact else None, "" if fact else f"no fact says {m.group(0)}"))
    told = [(m, int(m.group(1).replace(",", ""))) for m in _COUNT.finditer(sentence) if not any(p <= m.start() < p + len(pm.group(0)) for p, pm in popular)]
    told += [(m, None) for m in _WHO.finditer(sentence) if not any(cm.start() <= m.start() < cm.end() for cm, _ in told)]
    for match, n in told:
        tail = sentence[match.end() :]
        # The shopper's own verbs ("... the shoe you bought ...") are not the counted shoppers'.
        verbs = set(re.findall(r"[a-z]+", re.sub(r"\byou(?:'ve| have)?\s+(?:already\s+|recently\s+)?[a-z]+", " ", tail.lower())))
        kinds = []
        if verbs & _PURCHASE_WORDS:
            kinds.append(FactKind.BOUGHT_TOGETHER)
        if verbs & _VIEW_WORDS:
            kinds.append(FactKind.VIEWED_TOGETHER)
        position = _token_at(sentence, tokens, match.start())
        subject = _subject_at(position, mentions, previous)
        claim = _match_together(match.group(0) + tail.split(".")[0], n, kinds, subject, facts)
        went = _WENT_ON.search(tail)
        if went:
            # What they went on to buy is the recommended item, never one of the shopper's own.
            after = _token_at(sentence, tokens, match.end() + went.end())
            own = next((m for m in mentions if m.start >= after and m.size >= 2 and not any(s.kind is FactKind.TASTE for s in m.subjects)), None)
            pointed = after < len(tokens) and tokens[after].raw.lower() in ("this", "these", "it", "them")
            # Words the item's own title has too ("Swingline Standard Stapler [Value Pack]") name the item.
            span = [t.stem for t in tokens[own.start : own.end + 1] if t.stem in facts.stems.get(own.subjects[0].fact_id, ())] if own else []
            if own is not None and own.start <= after + 2 and not pointed and not set(span) <= facts.item_stems:
                name = own.subjects[0]
                claim = replace(claim, fact_id=None, problem=f'says the counted shoppers went on to buy "{name.value}" ({name.fact_id}), an item of your history: what they went on to buy is the recommended item')
        claims.append(claim)
    if re.search(r"\bnext\b", sentence, re.IGNORECASE):
        at = next((i for i, t in enumerate(tokens) if t.raw.lower() == "next" and i not in named), None)
        if at is not None and not any(c.kind == "together" for c in claims):
            subject = _subject_at(at, mentions, previous)
            ids = [s.history_item_id for s in subject.subjects if s.history_item_id] if subject else []
            fact = next((f for f in facts.facts if f.kind is FactKind.OFTEN_NEXT and f.history_item_id in ids), None)
            name = subject.subjects[0].value if subject else "your history"
            claims.append(Claim("next", "next", ids[0] if ids else None, "often next", fact.fact_id if fact else None,
                                "" if fact else f'says shoppers pick it next after "{name}", but no fact says so'))
    return claims


def _token_at(sentence: str, tokens: list[_Token], char: int) -> int:
    """The index of the token at a character offset (tokens are found left to right)."""
    return len([m for m in _TOKEN.finditer(sentence[:char]) if m.group(0).strip()])


def _match_together(words: str, n: int | None, kinds: list[FactKind], subject: _Mention | None, facts: _Table) -> Claim:
    together = [f for f in facts.facts if f.kind in _TOGETHER_KINDS]
    ids = [s.history_item_id for s in subject.subjects if s.history_item_id] if subject else [f.history_item_id for f in together]
    fitting = [f for f in together if f.history_item_id in ids and f.kind in (kinds or _TOGETHER_KINDS) and (n is None or f.count == n)]
    if len(kinds) > 1:
        fitting = []  # "who bought X went on to look at it" is neither count
    words = " ".join(words.split())
    if fitting:
        return Claim("together", words, fitting[0].history_item_id, str(fitting[0].count), fitting[0].fact_id)
    subject_id = ids[0] if ids else None
    named = facts.history_fact(subject_id) if subject_id else None
    own = [f for f in together if f.history_item_id == subject_id]
    if own and n is not None and all(f.count != n for f in own):
        elsewhere = next((f for f in together if f.count == n and f.history_item_id != subject_id), None)
        if elsewhere is not None:
            owner = facts.history_fact(elsewhere.history_item_id)
            return Claim("together", words, subject_id, str(n), None,
                         f'splices two facts: {n} shoppers is the count of "{owner.value if owner else elsewhere.history_item_id}" ({elsewhere.fact_id}), not of "{named.value}" ({named.fact_id})')
        counts = ", ".join(f"{f.fact_id}: {f.count}" for f in own)
        return Claim("together", words, subject_id, str(n), None, f'says {n} shoppers, but the facts count {counts} for "{named.value}"')
    if own:
        fact = next((f for f in own if f.count == n), own[0])
        did = "bought" if fact.kind is FactKind.BOUGHT_TOGETHER else "only looked at"
        return Claim("together", words, subject_id, str(n), None, f'misstates what the counted shoppers did: in {fact.fact_id} they {did} it')
    where = f'"{named.value}" ({named.fact_id})' if named else "any history item"
    return Claim("together", words, subject_id, str(n) if n is not None else "", None, f"no fact counts shoppers who went from {where} to this item")


# ---- ranks ----


def _rank_claims(tokens: list[_Token], facts: _Table) -> list[Claim]:
    claims = []
    for token in tokens:
        if not token.raw.startswith("#"):
            continue
        n = int(token.raw[1:]) if token.raw[1:].isdigit() else None
        fact = next((f for f in facts.facts if f.kind in (FactKind.RANK, FactKind.COUNTERFACTUAL) and n in (f.rank, f.rank_without)), None)
        claims.append(Claim("rank", token.raw, fact.history_item_id if fact else None, token.raw, fact.fact_id if fact else None,
                            "" if fact else f"no rank fact says {token.raw}"))
    return claims
