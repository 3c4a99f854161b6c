"""The grounding check: an explanation may only say what its fact table supports.

Lexical and strict on purpose; each rule below closes a way a sentence can be false while every
word in it occurs somewhere in the facts (whyrec/explainer/data/grounding_labels.json measures them):

1. vocabulary: every content word and number of the text occurs in some fact (or is one of the few
   connective words an explanation needs);
2. names: every run of capitalised words is one product/brand/category name from a single fact,
   words in order (words may be dropped, "Kodak 10XL Ink Cartridge"), so two real names cannot be
   spliced into an invented product; runs joined by "and"/"in"/"the" are checked part by part;
3. what is offered: the words describing the recommended item ("here are white Jones dividers",
   "this stapler is made by Scotch") must come from facts about the item, not from a history item,
   so a colour, size, brand or number of a past purchase is not passed off as the item's;
4. what the shopper did: the words after "you bought" must come from the history facts, the
   verb must match the recorded event, and the recommended item is not claimed as bought;
   "another X product" needs the fact that a history item is also made by X;
5. ranks: "#A instead of #B" / "from #A to #B" must match the rank and counterfactual facts;
6. history: the text names an item from the shopper's history (or says "popular" / "new" when that is the fact).

A paraphrase that uses a new word fails; that costs a template sentence, never a false claim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from whyrec.core.schema import RELATION_KINDS, Fact, FactKind, FactTable
from whyrec.explainer import lexicon
from whyrec.explainer.claims import Claim, find_claims, first_problem
from whyrec.explainer.lexicon import CONNECTIVES, EVENT_WORDS

# A word, or one punctuation mark that ends a name (a comma, a colon, a bracket, a quote).
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’&.\-/#]*[A-Za-z0-9]|[A-Za-z0-9]|[,;:()\[\]\"“”!?]|\.(?=\s|$)")
# Lower-case words that may sit inside a product name ("Binder with Extra Durable Hinge").
_NAME_JOINERS = frozenset({"with", "and", "of", "for", "the", "in", "on", "&", "-", "x", "by"})
# Where two separate names may meet inside one run ("Canon Matte Photo Paper and Canon 4x6 ...").
_NAME_SPLITS = frozenset({"and", "in", "the", "by", "on"})

_HISTORY_CONTEXT = frozenset(lexicon.EVENT_VERBS) | {"without", "history", "like"}
# Words that start a description of the recommended item.
# "The item is a ...", "the seller describes it as ...": what follows is said of the recommended item too.
_OFFER_WORDS = frozenset({"suggest", "suggested", "recommend", "here", "here's", "this", "these", "try", "consider", "item", "seller"})


# Praise is never a fact, even when a seller wrote it; quoting the seller as the seller is allowed.
_PRAISE = frozenset(
    "best greatest perfect amazing awesome incredible excellent fantastic superb outstanding unbeatable "
    "guaranteed finest ultimate unmatched".split()
)


@dataclass(frozen=True)
class GroundingVerdict:
    passed: bool
    reason: str  # "ok", or what was unsupported
    unsupported: tuple[str, ...] = ()
    cites_history: bool = False
    claims: tuple[Claim, ...] = ()  # every claim found in the text, with the fact that matches it (or why none does)

    def to_dict(self, table: FactTable) -> dict:
        """The verdict as `whyrec explainer check --json` prints it: each claim with its fact."""
        facts = table.by_id()
        return {
            "passed": self.passed,
            "reason": self.reason,
            "claims": [
                {"kind": c.kind, "words": c.words, "history_item_id": c.subject if c.subject in {f.history_item_id for f in table.facts} else None,
                 "value": c.value, "matched": c.matched, "fact_id": c.fact_id, "fact_text": facts[c.fact_id].text if c.fact_id in facts else None,
                 "problem": c.problem or None}
                for c in self.claims
            ],
        }


# Last words that leave a sentence unfinished ("... because you bought the.").
_DANGLING = frozenset("the a an and or of to in on for with by who which that your from at as but because so than is are was were its".split())
# The shopper is "you": "the user enjoys ...", "this shopper bought ..." speak about them instead.
_THIRD_PERSON = re.compile(
    r"\b(?:the|this|that|our)\s+(?:user|shopper|customer|buyer|client)\b(?!s)|\buser['’]s\b"
    r"|\b(?:he|she)\s+(?:bought|likes?|enjoys?|viewed|looked|prefers?|has|is|loves?)\b",
    re.IGNORECASE,
)


class _Sides:
    """The table's words split by what they describe: anything, the item, or the shopper's history."""

    def __init__(self, table: FactTable):
        facts = table.facts
        self.all_text = " ".join(f"{f.text} {f.value}" for f in facts)
        self.all = lexicon.vocabulary([self.all_text])
        item_texts = [f"{f.text} {f.value}" for f in facts if not f.about_history]
        # Shared facts state something true of the item too (its brand, category, use); of the
        # counterfactual only the number is about the item.
        item_texts += [f.value for f in facts if f.kind in (FactKind.SHARED_BRAND, FactKind.SHARED_CATEGORY, FactKind.SHARED_USE, FactKind.COUNTERFACTUAL)]
        # What other shoppers did next is said of the item ("shoppers pick this next"); the claim
        # check ties it to its history item.
        item_texts += [re.sub(r'"[^"]*"', " ", f.text) for f in facts if f.kind in (FactKind.BOUGHT_TOGETHER, FactKind.VIEWED_TOGETHER, FactKind.OFTEN_NEXT)]
        self.item_text = " ".join(item_texts)
        self.item = lexicon.vocabulary(item_texts)
        self.item_numbers = lexicon.numbers(" ".join(f"{f.text} {f.value}" for f in facts if not f.about_history and f.kind is not FactKind.RANK))
        history_texts = [f.value for f in facts if f.kind in (FactKind.HISTORY_ITEM, FactKind.SHARED_BRAND, FactKind.SHARED_USE, FactKind.TASTE)]
        self.history_text = " ".join(history_texts)
        self.history = lexicon.vocabulary(history_texts)
        self.item_names = [lexicon.name_tokens(f.value) for f in facts if f.kind is FactKind.ITEM_TITLE]
        self.history_names = [lexicon.name_tokens(f.value) for f in facts if f.kind is FactKind.HISTORY_ITEM]
        # Each history item with the verb of its recorded event ("bought", "looked", ...).
        self.history_events = [(lexicon.name_tokens(f.value), _event_verb(f)) for f in facts if f.kind is FactKind.HISTORY_ITEM]
        self.fact_names = [lexicon.name_tokens(f"{f.text} {f.value}") for f in facts]
        self.shared_brands = {lexicon.norm(f.value) for f in facts if f.kind is FactKind.SHARED_BRAND}
        self.item_brand = next((lexicon.norm(f.value) for f in facts if f.kind is FactKind.ITEM_BRAND), None)
        self.event_verbs = {verb for _, verb in self.history_events}
        self.rank = next((f.value for f in facts if f.kind is FactKind.RANK), None)
        self.rank_without = next((f.value for f in facts if f.kind is FactKind.COUNTERFACTUAL), None)
        # The history item the counterfactual is about: 'Without "X" in your history ...'.
        self.counterfactual_item = next((lexicon.name_tokens(f.text.split('"')[1]) for f in facts if f.kind is FactKind.COUNTERFACTUAL and f.text.count('"') >= 2), None)
        self.names = {lexicon.norm(f.value) for f in facts if f.kind in (FactKind.ITEM_TITLE, FactKind.HISTORY_ITEM, FactKind.TASTE)}
        self.popular = any(f.kind is FactKind.POPULAR for f in facts)
        self.new = any(f.kind is FactKind.NEW_ITEM for f in facts)


def check_grounding(text: str, table: FactTable) -> GroundingVerdict:
    """Passes only if the text is a whole sentence to the shopper, every word and name is in the
    facts (rules 1-6 above) and every claim it makes matches one fact with the same subjects
    (`whyrec.explainer.claims`)."""
    if not text.strip():
        return GroundingVerdict(False, "empty text")
    sides = _Sides(table)
    # With no history facts, the reason a shopper sees the item is its popularity or newness.
    no_history_reason = (sides.popular and "popular" in lexicon.words(text)) or (sides.new and "new" in lexicon.words(text))
    cites_history = _cites_history(text, table) or (no_history_reason and not table.history_facts())
    claims = tuple(find_claims(text, table))
    # "You bought the 6061 Aluminum Round Rod" names the history item even when the recommended
    # item's title starts the same way: the recommended item is never one the shopper bought.
    cites_history = cites_history or any(c.kind in ("history", "taste") and c.matched for c in claims)
    problem = first_problem(list(claims))
    verdict = (
        _surface_verdict(text, sides, cites_history)
        or (GroundingVerdict(False, problem.problem, (problem.words,), cites_history) if problem else None)
        or _relation_verdict(text, sides, cites_history)
        or GroundingVerdict(True, "ok", (), True)
    )
    return replace(verdict, claims=claims)


NO_REASON = "gives no reason a shopper can follow"


def is_bare(text: str, table: FactTable, verdict: GroundingVerdict) -> bool:
    """The text names history items and nothing a person can follow (`Because you bought "AT&T 210
    Corded Phone".`, or that and the item's name): no relation, count, next, rank or taste claim, and
    no shared brand, category or use word outside the history names ("here is another Kodak ink
    cartridge" counts as a reason)."""
    kinds = {c.kind for c in verdict.claims}
    if not kinds or not kinds <= {"history", "history_words"}:
        return False
    # The words left when the history names are taken out: runs of two or more words of a history
    # claim ("you bought", "Stridewell Road Running Shoe"); a lone brand word ("Stridewell socks") stays.
    named = {w.lower() for c in verdict.claims if c.kind == "history" for w in c.words.split()}
    tokens = re.findall(r"[A-Za-z0-9][A-Za-z0-9&'’\-]*", text)
    inside = [t.lower() in named for t in tokens]
    rest = [t for i, t in enumerate(tokens) if not (inside[i] and ((i > 0 and inside[i - 1]) or (i + 1 < len(tokens) and inside[i + 1])))]
    shared = (FactKind.SHARED_BRAND, FactKind.SHARED_CATEGORY, FactKind.SHARED_USE)
    values = {s for f in table.facts if f.kind in shared for s in lexicon.content_stems(f.value)}
    return not lexicon.content_stems(" ".join(rest)) & values


def missing_reason(text: str, table: FactTable, verdict: GroundingVerdict) -> str | None:
    """Why a text that passes the check is still not worth showing, or None: it is bare while the
    table states a relation it could have given. With no relation in the table, naming the history
    item is the best true reason there is."""
    reasons = [f for f in table.facts if f.kind in RELATION_KINDS]
    if not reasons or not is_bare(text, table, verdict):
        return None
    return f"{NO_REASON}: it names only your history, but {', '.join(f.fact_id for f in reasons[:3])} say why ({reasons[0].text})"


def check_reason(text: str, table: FactTable) -> GroundingVerdict:
    """The verdict a text must pass to be shown: the claim check, and a reason beyond the history
    names when the table holds one (`missing_reason`)."""
    verdict = check_grounding(text, table)
    missing = missing_reason(text, table, verdict) if verdict.passed else None
    return replace(verdict, passed=False, reason=missing) if missing else verdict


def _surface_verdict(text: str, sides: _Sides, cites_history: bool) -> GroundingVerdict | None:
    """The first rule on the words themselves that the text breaks (form, vocabulary, names, praise), or None."""
    form = _form_problem(text, sides)
    if form:
        return GroundingVerdict(False, form[0], form[1], cites_history)

    unsupported = [n for n in sorted(lexicon.numbers(text) - lexicon.numbers(sides.all_text))]
    for word in lexicon.words(text):
        if word.isdigit() or lexicon.stem(word) in sides.all or lexicon.stem(word) in lexicon.CONNECTIVE_STEMS:
            continue
        if word not in unsupported:
            unsupported.append(word)
    unsupported += [f'"{name}"' for name in _names(text) if not _name_supported(name, sides)]
    if unsupported:
        return GroundingVerdict(False, "not in the facts: " + ", ".join(unsupported), tuple(unsupported), cites_history)

    # A product's own name quoted whole ("Perfect-Prime TC41", "#8 Coarse Screws") is data: its
    # words are neither praise nor ranks.
    unquoted = _QUOTED.sub(lambda m: '" "' if lexicon.norm(m.group(1)) in sides.names else m.group(0), text)
    for sentence in lexicon.sentences(unquoted):
        praise = [w for w in lexicon.words(sentence) if w in _PRAISE]
        if praise and "seller" not in lexicon.words(sentence):
            return GroundingVerdict(False, "praises the item: " + ", ".join(praise), tuple(praise), cites_history)
    return None


def _relation_verdict(text: str, sides: _Sides, cites_history: bool) -> GroundingVerdict | None:
    """The first word-level rule on what the words are said of that the text breaks, or None."""
    for rule in (_offer_problem, _history_problem, _rank_problem):
        problem = rule(text if rule is not _rank_problem else _QUOTED.sub(lambda m: m.group(0).replace("#", " ") if lexicon.norm(m.group(1)) in sides.names else m.group(0), text), sides)
        if problem:
            return GroundingVerdict(False, problem[0], problem[1], cites_history)
    if not cites_history:
        return GroundingVerdict(False, "does not name anything from the shopper's history", (), False)
    return None


def _form_problem(text: str, sides: _Sides) -> tuple[str, tuple[str, ...]] | None:
    """A shown text is whole and speaks to the shopper: not cut off by the token limit, not about
    "the user"."""
    stripped = text.strip()
    if not re.search(r"[.!?][\"'”’)\]]*$", stripped):
        return "is cut off: it does not end a sentence", (stripped[-20:],)
    if stripped.count('"') % 2 or stripped.count("“") != stripped.count("”"):
        return "is cut off: a quoted name is not closed", (stripped[-20:],)
    # A quoted name at the end ends with its own last word ("... Certificate of").
    ends_with_name = bool(re.search(r'"([^"]*)"[.!?]$', stripped)) and lexicon.norm(re.search(r'"([^"]*)"[.!?]$', stripped).group(1)) in sides.names
    last = "" if ends_with_name else (lexicon.words(stripped) or [""])[-1]
    if last in _DANGLING:
        return f'is cut off: it stops after "{last}"', (last,)
    if last and not last.isdigit() and lexicon.stem(last) not in sides.all and lexicon.stem(last) not in lexicon.CONNECTIVE_STEMS:
        if any(w.startswith(last) and w != last for w in lexicon.words(sides.all_text)):
            return f'is cut off mid-word: "{last}"', (last,)
    third = _THIRD_PERSON.search(stripped)
    if third:
        return f'speaks of the shopper in the third person ("{third.group(0)}"), not to them', (third.group(0),)
    return None


def _offer_problem(text: str, sides: _Sides) -> tuple[str, tuple[str, ...]] | None:
    """Words describing the recommended item must come from facts about it, and a history item
    is not offered as the recommendation."""
    for sentence in lexicon.sentences(text):
        offering = False
        for clause in lexicon.CLAUSE.split(sentence):
            words = lexicon.words(clause)
            if not words:
                continue
            start = next((i for i, w in enumerate(words) if w in _OFFER_WORDS), None)
            offer_at = re.search(r"\b(" + "|".join(sorted(_OFFER_WORDS)) + r")\b", clause, re.IGNORECASE)
            if set(words) & _HISTORY_CONTEXT:
                turn = next(i for i, w in enumerate(words) if w in _HISTORY_CONTEXT)
                if offering and start is None and turn > 0:
                    # "Here is X, a Yirgacheffe coffee like the one you bought": the words before
                    # the turn to the history still describe the item.
                    at = re.search(r"\b" + re.escape(words[turn]) + r"\b", clause, re.IGNORECASE)
                    words, clause = words[:turn], clause[: at.start()] if at else clause
                else:
                    # "... like the X you bought", "without X in your history": about the history.
                    offering = False
                    if start is None or any(w in _HISTORY_CONTEXT for w in words[start:]):
                        continue
            if start is not None and offer_at is not None:
                offering = True
                words, clause = words[start:], clause[offer_at.start() :]
            if not offering:
                continue
            for name in _names(clause):
                tokens = lexicon.name_tokens(name)
                if any(_subsequence(tokens, h) for h in sides.history_names) and not any(_subsequence(tokens, i) for i in sides.item_names):
                    return f'presents "{name}", an item from the history, as the recommendation', (name,)
            foreign = [w for w in words if not w.isdigit() and lexicon.stem(w) not in sides.item and lexicon.stem(w) not in lexicon.CONNECTIVE_STEMS]
            # Numbers after "#" are ranks (checked below); any other number must be the item's own.
            foreign += sorted({n.replace(",", "") for n in _ITEM_NUMBER.findall(clause)} - sides.item_numbers)
            if foreign:
                return "says of the recommended item what only a history item has: " + ", ".join(foreign), tuple(foreign)
            claim = _brand_problem(clause, sides)
            if claim:
                return claim
    return None


def _brand_problem(clause: str, sides: _Sides) -> tuple[str, tuple[str, ...]] | None:
    for match in re.finditer(r"\b(another|other|more|made by|from|by)\s+((?:[A-Z0-9][\w&'’\-]*\s*)+)", clause):
        trigger, run = match.group(1), lexicon.norm(match.group(2))
        brand = sides.item_brand
        if brand is None or not run.startswith(brand):
            if trigger in ("from", "by") and any(_subsequence(lexicon.name_tokens(match.group(2)), i) for i in sides.item_names):
                continue
            return f'names "{match.group(2).strip()}" as the maker, not the recommended item\'s brand', (match.group(2).strip(),)
        if trigger in ("another", "other", "more") and brand not in sides.shared_brands:
            return f'"{trigger} {match.group(2).strip()}" says the shopper has one, but no history item is made by it', (match.group(2).strip(),)
    return None


def _history_problem(text: str, sides: _Sides) -> tuple[str, tuple[str, ...]] | None:
    """What the text says the shopper did must be what the history facts record."""
    for clause in lexicon.CLAUSE.split(text):
        words = lexicon.words(clause)
        # Other shoppers' verbs ("12 shoppers who bought it went on to buy this") are not the shopper's.
        others = next((i for i, w in enumerate(words) if w in _OTHER_SHOPPERS), len(words))
        verbs = [w for w in words[:others] if w in lexicon.EVENT_VERBS]
        if not verbs:
            continue
        for verb in verbs:
            if lexicon.EVENT_VERBS[verb] not in sides.event_verbs:
                recorded = " / ".join(sorted(sides.event_verbs)) or "nothing"
                return f'says the shopper {verb} something, but the history records: {recorded}', (verb,)
        # Up to where the clause turns to the recommended item ("... you bought is why this X is here").
        turn = re.search(r"\b(" + "|".join(sorted(_OFFER_WORDS)) + r")\b", clause[clause.lower().find(verbs[0]) :], re.IGNORECASE)
        about_history = clause[: clause.lower().find(verbs[0]) + turn.start()] if turn else clause
        for name in _names(about_history):
            tokens = lexicon.name_tokens(name)
            if any(_subsequence(tokens, i) for i in sides.item_names) and not any(_subsequence(tokens, h) for h in sides.history_names):
                return f'says the shopper already has "{name}", the recommended item', (name,)
            recorded = {verb for h, verb in sides.history_events if _subsequence(tokens, h)}
            wrong = [v for v in verbs if recorded and lexicon.EVENT_VERBS[v] not in recorded]
            if wrong:
                return f'says the shopper {wrong[0]} "{name}", but the history records they {" / ".join(sorted(recorded))} it', (wrong[0],)
        # The words after the event verb, up to where the clause turns to the item, name what they did.
        start = words.index(verbs[0]) + 1
        end = next((i for i, w in enumerate(words[start:], start) if w in _OFFER_WORDS or w in ("so", "we")), len(words))
        claimed = [w for w in words[start:end] if lexicon.stem(w) not in lexicon.CONNECTIVE_STEMS and not w.isdigit() and lexicon.stem(w) not in sides.history]
        if claimed:
            return "says the shopper has something the history does not show: " + ", ".join(claimed), tuple(claimed)
    return None


_QUOTED = re.compile(r'"([^"]+)"')
# A number said of the item: not a rank ("#3"), not a count of shoppers or of predicted items,
# which the claim check matches to their own facts.
_ITEM_NUMBER = re.compile(r"(?<![#\d])\d+(?:[.,/]\d+)*(?![\d.,/]*\d)(?!\s+(?:other\s+)?(?:shoppers?|customers?|people|buyers?|items)\b)")
_OTHER_SHOPPERS = frozenset({"shopper", "shoppers", "customer", "customers", "people", "others", "who"})


def _event_verb(fact: Fact) -> str:
    """The verb of a history fact's event ("looked" for a view)."""
    if fact.event is not None:
        return lexicon.EVENT_VERBS[EVENT_WORDS[fact.event].split()[0]]
    return next((lexicon.EVENT_VERBS[w] for w in lexicon.words(fact.text)[:3] if w in lexicon.EVENT_VERBS), "bought")


def _rank_problem(text: str, sides: _Sides) -> tuple[str, tuple[str, ...]] | None:
    """"#A instead of #B" and "from #A to #B" must put the counterfactual and the rank the right way
    round, and be told of the history item the counterfactual is about and of the recommended item."""
    for sentence in lexicon.sentences(text):
        if "#" in sentence:
            for name in _names(sentence):
                tokens = lexicon.name_tokens(name)
                if any(_subsequence(tokens, i) for i in sides.item_names):
                    continue
                if any(_subsequence(tokens, h) for h in sides.history_names) and not (sides.counterfactual_item and _subsequence(tokens, sides.counterfactual_item)):
                    return f'ties the rank to "{name}", but the counterfactual is about another history item', (name,)
            subject = re.search(r"\bwould\s+(?:rank|drop|fall|be)|\brank(?:s|ed)?\s+#", sentence)
            tail = sentence[subject.start() - 80 if subject and subject.start() > 80 else 0 : subject.start()] if subject else ""
            after_without = re.split(r"\bhistory\b|,", tail)[-1]
            for name in _names(after_without):
                tokens = lexicon.name_tokens(name)
                if any(_subsequence(tokens, h) for h in sides.history_names) and not any(_subsequence(tokens, i) for i in sides.item_names):
                    return f'says "{name}", an item from the history, is what would rank there', (name,)
        pairs = [(m.group(1), m.group(2), "instead") for m in re.finditer(r"#(\d+)\s*(?:,\s*not|instead of|rather than)\s*#(\d+)", sentence)]
        pairs += [(m.group(1), m.group(2), "from") for m in re.finditer(r"from\s*#(\d+)\s*to\s*#(\d+)", sentence)]
        dropping = bool(re.search(r"\b(without|drop|drops|dropped|fall|falls)\b", sentence, re.IGNORECASE))
        for a, b, form in pairs:
            expected = (sides.rank_without, sides.rank) if form == "instead" or not dropping else (sides.rank, sides.rank_without)
            if (a, b) != expected:
                return f"#{a} and #{b} do not match the rank (#{sides.rank}) and the counterfactual (#{sides.rank_without})", (a, b)
        if not pairs:
            for n in re.findall(r"#(\d+)", sentence):
                if n not in (sides.rank, sides.rank_without) or (n == sides.rank_without and not dropping):
                    return f"#{n} is not where the item ranks (#{sides.rank})", (n,)
    return None


def _cites_history(text: str, table: FactTable) -> bool:
    """The text names a history item: enough of the words that set its name apart from the
    recommended item's own name and brand (so "another Lumora lamp" alone does not count)."""
    text_words = lexicon.content_stems(text)
    own = set()
    for fact in table.facts:
        if fact.kind in (FactKind.ITEM_TITLE, FactKind.ITEM_BRAND):
            own |= lexicon.content_stems(fact.value)
    for fact in table.facts:
        if fact.kind not in (FactKind.HISTORY_ITEM, FactKind.TASTE):
            continue
        name = lexicon.content_stems(fact.value)
        distinctive = name - own or name
        if text_words & distinctive and len(text_words & name) >= min(2, len(name)):
            return True
    return False


def _names(text: str) -> list[str]:
    """Runs of two or more capitalised words (joiners allowed inside, punctuation ends a run),
    minus a leading connective such as the "Because" that opens a sentence."""
    names, run = [], []

    def close() -> None:
        while run and (run[-1].lower() in _NAME_JOINERS):
            run.pop()
        while run and run[0].lower() in CONNECTIVES:
            run.pop(0)
        if len(run) >= 2:
            names.append(" ".join(run))
        run.clear()

    for token in _TOKEN.findall(text):
        if token[0].isupper() or token[0].isdigit():
            run.append(token)
        elif run and token.lower() in _NAME_JOINERS:
            run.append(token)
        else:
            close()
    close()
    return names


def _name_supported(name: str, sides: _Sides) -> bool:
    tokens = lexicon.name_tokens(name)
    # Glue words may differ from the title's ("Keychron K8 Pro with Brown Switches" for
    # "Keychron K8 Pro Mechanical Keyboard, Brown Switches"), within one product's own title.
    glued = [t for t in tokens if t not in _NAME_JOINERS]
    if 2 <= len(glued) < len(tokens) and any(_subsequence(glued, n) for n in (*sides.item_names, *sides.history_names)):
        return True
    return _tokens_supported(tokens, sides.fact_names)


def _tokens_supported(tokens: list[str], fact_names: list[list[str]]) -> bool:
    """The words appear in order within one fact, or split at a joiner into parts that do."""
    while tokens and tokens[0] in _NAME_SPLITS:
        tokens = tokens[1:]
    while tokens and tokens[-1] in _NAME_SPLITS:
        tokens = tokens[:-1]
    if len(tokens) < 2 or any(_subsequence(tokens, f) for f in fact_names):
        return True
    return any(
        token in _NAME_SPLITS and _tokens_supported(tokens[:i], fact_names) and _tokens_supported(tokens[i + 1 :], fact_names)
        for i, token in enumerate(tokens)
        if 0 < i < len(tokens) - 1
    )


def _subsequence(needle: list[str], haystack: list[str]) -> bool:
    """needle's words occur in haystack in order, starting where its first word does."""
    if not needle:
        return False
    for start, word in enumerate(haystack):
        if word != needle[0]:
            continue
        it = iter(haystack[start + 1 :])
        if all(any(w == n for w in it) for n in needle[1:]):
            return True
    return False


def cited_facts(text: str, table: FactTable) -> list[str]:
    """Ids of the facts whose values the text uses (for models that do not list their sources)."""
    text_words = lexicon.content_stems(text)
    ids = []
    for fact in table.facts:
        value_words = lexicon.content_stems(fact.value)
        if value_words and len(text_words & value_words) >= min(2, len(value_words)):
            ids.append(fact.fact_id)
    return ids
