"""The Shop view: the chat widget a shop would embed. The shopper asks, gets item cards whose
"Why you see this" arrives as each explanation is ready, opens the evidence behind it, and uses the
controls next to each reason (not interested; don't use this purchase; helpful or not)."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, replace

import gradio as gr

from whyrec.core.config import Settings
from whyrec.core.errors import UnknownShopper, WhyrecError
from whyrec.core.protocol import FeedbackKind
from whyrec.core.schema import FactKind, RecommendedItem
from whyrec.pipeline import short_title
from whyrec.service.service import ItemExplained, SlateLogged, SlateRanked, WhyrecService

MAX_SHOPPERS_LISTED = 500
_CHIP_LABEL = {
    FactKind.HISTORY_ITEM: "your history",
    FactKind.SHARED_BRAND: "same brand",
    FactKind.SHARED_CATEGORY: "same category",
    FactKind.SHARED_USE: "same use",
    FactKind.BOUGHT_TOGETHER: "other shoppers bought it next",
    FactKind.VIEWED_TOGETHER: "other shoppers looked at it next",
    FactKind.OFTEN_NEXT: "often picked next",
    FactKind.TASTE: "your taste",
    FactKind.COUNTERFACTUAL: "what moved it",
    FactKind.RANK: "rank",
    FactKind.ITEM_BRAND: "brand",
    FactKind.ITEM_CATEGORY: "category",
    FactKind.ITEM_PHRASE: "seller's words",
    FactKind.ITEM_TITLE: "item",
}

CSS = """
.whyrec-card {font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; border: 1px solid #d0d7de; border-radius: 10px; padding: 10px 14px; margin: 4px 0;}
.whyrec-card h4 {margin: 0 0 6px 0;}
.whyrec-why {margin: 4px 0 8px 0;}
.whyrec-pending {color: #888; font-style: italic;}
.whyrec-chips {display: flex; flex-wrap: wrap; gap: 6px;}
.whyrec-chip {border: 1px solid #b6c2cf; border-radius: 14px; padding: 2px 10px; font-size: 0.85em; background: #f4f7fa;}
.whyrec-chip[open] {border-radius: 8px; background: #fff;}
.whyrec-chip summary {cursor: pointer;}
.whyrec-badge {font-size: 0.75em; color: #555;}
"""


@dataclass(frozen=True)
class Card:
    """One item card as the view shows it (text empty until its explanation is ready)."""

    item_id: str
    title: str
    rank: int
    text: str = ""
    source: str = ""
    facts: tuple[tuple[str, str, str], ...] = ()  # (fact id, chip label, fact sentence) the text rests on
    driver_id: str | None = None  # the history item the reason rests on: target of "don't use this purchase"
    pending: bool = False  # a checked template shown while the model's text is being written
    later: bool = False  # the page stopped waiting: the model's text shows on the next visit


@dataclass(frozen=True)
class SlateView:
    user_id: str
    cards: tuple[Card, ...] = ()
    impression_id: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Intent:
    kind: str  # "recommend", "why", "why_not"
    position: int = 0  # for "why": which card (0-based)
    item_id: str | None = None  # for "why not"


def parse_intent(message: str, known_items: set[str], view: SlateView | None) -> Intent:
    """"why this one?" / "why #2" -> explain a shown card; "why not 123?" -> why not; else recommend."""
    text = message.strip().lower()
    if not re.search(r"\bwhy\b", text):
        return Intent("recommend")
    ids = [t for t in re.findall(r"[A-Za-z0-9_\-]+", message) if t in known_items]
    if re.search(r"\bwhy\s+not\b", text) or (ids and not (view and any(c.item_id == ids[0] for c in view.cards))):
        return Intent("why_not", item_id=ids[0] if ids else None)
    if ids and view:
        return Intent("why", position=next(i for i, c in enumerate(view.cards) if c.item_id == ids[0]))
    ordinals = {"first": 0, "second": 1, "third": 2, "fourth": 3, "fifth": 4, "last": -1}
    number = re.search(r"#\s*(\d+)|\bnumber\s+(\d+)", text)
    if number:
        return Intent("why", position=int(number.group(1) or number.group(2)) - 1)
    for word, position in ordinals.items():
        if re.search(rf"\b{word}\b", text):
            return Intent("why", position=position)
    return Intent("why", position=0)


def card_for(entry: RecommendedItem, history: set[str]) -> Card:
    """`history`: the shopper's history item ids (the ones the card's controls may act on)."""
    e = entry.explanation
    # The control acts on the purchase the reason names; else on the one that raised the score most.
    named = [f.history_item_id for f in e.facts if f.kind is FactKind.HISTORY_ITEM and f.history_item_id in history]
    drivers = named or [a.history_item_id for a in entry.ranked.attributions if a.contribution > 0 and a.history_item_id in history]
    driver = drivers[0] if drivers else None
    return Card(
        item_id=entry.item_id,
        title=entry.title,
        rank=entry.ranked.rank,
        text=e.text,
        source=e.source.value,
        facts=tuple((f.fact_id, _CHIP_LABEL.get(f.kind, f.kind.value.replace("_", " ")), f.text) for f in e.facts),
        driver_id=driver,
        pending=e.pending,
    )


def card_html(card: Card) -> str:
    if card.text:
        badge = "written by the model, checked against the facts" if card.source == "llm" else "built from the facts"
        if card.pending:
            badge += "; the assistant's own words are on the way"
        elif card.later:
            badge += "; the assistant's own words will be here on your next visit"
        why = f'<p class="whyrec-why"><b>Why you see this:</b> <span class="whyrec-text">{html.escape(card.text)}</span> <span class="whyrec-badge">({badge})</span></p>'
    else:
        why = '<p class="whyrec-why whyrec-pending">Why you see this: writing…</p>'
    chips = "".join(
        f'<details class="whyrec-chip" data-fact="{html.escape(fid)}"><summary>{html.escape(label)}</summary>{html.escape(sentence)}</details>'
        for fid, label, sentence in card.facts
    )
    return (
        f'<div class="whyrec-card" data-item-id="{html.escape(card.item_id)}"><h4>{html.escape(card.title)}</h4>'
        f"{why}<div class=\"whyrec-chips\">{chips}</div></div>"
    )


_ARRIVING = "The reason for each appears on its card."
_SHOWN = "Every card now shows its reason; ask “why this one?” for what it rests on."


def build_shop(service: WhyrecService, settings: Settings) -> gr.Blocks:
    catalog = service.catalog
    shoppers = catalog.users[:MAX_SHOPPERS_LISTED]
    known_items = set(catalog.items)
    k = settings.shop_k

    def history_md(user_id: str) -> str:
        try:
            events = service.history(user_id)[-6:]
        except UnknownShopper:
            return "**No activity yet.** Until you look at or buy something, your picks are popular and new items in this shop."
        except WhyrecError as exc:
            return f"**{html.escape(str(exc))}**"
        lines = [f"- {e.kind.value}: {catalog.items[e.item_id].title}" for e in reversed(events)]
        return "**Your recent activity**\n\n" + "\n".join(lines)

    def stream_slate(user_id: str, request: str, chat: list, lead: str):
        """Yields (chat, view, history) while the slate is ranked and each explanation arrives."""
        chat = chat + [{"role": "assistant", "content": lead + "Looking at your history…"}]
        view = SlateView(user_id)
        yield chat, view, gr.update()
        try:
            events = service.history(user_id)
        except WhyrecError:  # no usable history: the slate is popular and new items
            events = []
        history = {e.item_id for e in events}
        for event in service.stream(user_id, k, request):
            if isinstance(event, SlateRanked):
                cards = tuple(Card(r.item_id, t, r.rank) for r, t in zip(event.slate.items, event.titles))
                topic = " matching your words" if event.slate.topic_matched else ""
                view = SlateView(user_id, cards)
                source = "popular and new in this shop (there is no history of yours to go on yet)" if event.slate.cold_start else "from your history"
                chat[-1] = {"role": "assistant", "content": f"{lead}Here are {len(cards)} picks{topic} {source}. {_ARRIVING}"}
            elif isinstance(event, ItemExplained):
                cards = list(view.cards)
                cards[event.position] = card_for(event.item, history)
                view = replace(view, cards=tuple(cards))
            elif isinstance(event, SlateLogged):
                # The stream has stopped waiting: a card still waiting says when its words will come.
                cards = tuple(replace(c, pending=False, later=True) if c.pending else c for c in view.cards)
                view = replace(view, cards=cards, impression_id=event.served.impression.impression_id)
                # Said when the slate is done: the chat takes the next question from here on.
                chat[-1] = {"role": "assistant", "content": chat[-1]["content"].replace(_ARRIVING, _SHOWN)}
            yield chat, view, gr.update()
        yield chat, view, history_md(user_id)

    def respond(message: str, chat: list, user_id: str, view: SlateView | None):
        message = (message or "").strip()
        if not message:
            yield chat, view, gr.update(), ""
            return
        chat = chat + [{"role": "user", "content": message}]
        intent = parse_intent(message, known_items, view)
        try:
            if intent.kind == "recommend":
                for chat_now, view_now, history in stream_slate(user_id, message, chat, ""):
                    yield chat_now, view_now, history, ""
                return
            reply = why_reply(intent, user_id, view)
        except WhyrecError as exc:
            reply = f"Sorry: {exc}"
        yield chat + [{"role": "assistant", "content": reply}], view, gr.update(), ""

    def why_reply(intent: Intent, user_id: str, view: SlateView | None) -> str:
        if intent.kind == "why_not":
            if intent.item_id is None:
                return "Which item? Ask with its id, for example “why not 1234?”."
            w = service.why_not(user_id, intent.item_id, k)
            if w.shown:
                return f"“{w.title}” is in your top {k}: it ranks #{w.item.rank}."
            lines = [f"“{w.title}” ranks #{w.item.rank} of {w.item.candidates_scored} for you, below the {k} shown (score {w.score_gap:.2f} under the last one)."]
            lines += [f"- {c.text}" for c in w.changes]
            return "\n".join(lines)
        if view is None or not view.cards:
            return "Ask for some picks first, for example “show me something for my desk”."
        if not -len(view.cards) <= intent.position < len(view.cards):
            return f"There are only {len(view.cards)} items shown."
        card = view.cards[intent.position]
        if not card.text:
            return f"The reason for “{card.title}” is still being written."
        evidence = "\n".join(f"- {sentence}" for _, _, sentence in card.facts)
        return f"**{card.title}** is #{card.rank} for you. {card.text}\n\nWhat this rests on:\n{evidence}"

    def control(kind: FeedbackKind, item_id: str, chat: list, user_id: str, view: SlateView | None):
        try:
            if kind in (FeedbackKind.HELPFUL, FeedbackKind.NOT_HELPFUL):
                if view is None or view.impression_id is None:
                    raise gr.Error("wait until every reason is shown")
                service.record_feedback(user_id, kind, item_id, view.impression_id)
                gr.Info("Thanks, noted.")
                yield chat, view, gr.update()
                return
            service.record_feedback(user_id, kind, item_id)
        except WhyrecError as exc:
            raise gr.Error(str(exc))
        name = short_title(catalog.items[item_id])
        lead = f"Got it: you won't see “{name}” again. " if kind is FeedbackKind.NOT_INTERESTED else f"Got it: “{name}” no longer counts for your recommendations. "
        yield from stream_slate(user_id, "", chat, lead)

    with gr.Blocks(title="whyrec shop") as shop:
        gr.Markdown(f"## Shop assistant\nRecommendations from **{catalog.name}** with the reason for each. Ask for picks, then “why this one?” or “why not ITEM?”.")
        view_state = gr.State(None)
        with gr.Row():
            shopper = gr.Dropdown(shoppers, value=shoppers[0] if shoppers else None, label="Signed in as shopper", allow_custom_value=True, elem_id="shop-shopper", scale=1)
        with gr.Row():
            with gr.Column(scale=2):
                chat = gr.Chatbot(elem_id="shop-chat", height=460, label="Assistant")
                ask = gr.Textbox(placeholder="Show me something for my desk", elem_id="shop-input", show_label=False, submit_btn=True)
                history = gr.Markdown(elem_id="shop-history")
            with gr.Column(scale=3):

                @gr.render(inputs=[view_state])
                def cards(view: SlateView | None):
                    if view is None or not view.cards:
                        gr.Markdown("*Your picks will appear here.*")
                        return
                    for card in view.cards:
                        with gr.Group():
                            gr.HTML(card_html(card))
                            with gr.Row():
                                b_ni = gr.Button("Not interested", size="sm", elem_classes=["ctl-not-interested"], key=f"ni-{card.item_id}")
                                b_ex = None
                                if card.driver_id:
                                    label = f"Don't use “{short_title(catalog.items[card.driver_id])}” for my picks"
                                    b_ex = gr.Button(label, size="sm", elem_classes=["ctl-exclude"], key=f"ex-{card.item_id}")
                                b_up = gr.Button("Helpful", size="sm", elem_classes=["ctl-helpful"], key=f"up-{card.item_id}", interactive=view.impression_id is not None)
                                b_down = gr.Button("Not helpful", size="sm", elem_classes=["ctl-not-helpful"], key=f"down-{card.item_id}", interactive=view.impression_id is not None)
                        outputs = [chat, view_state, history]
                        inputs = [chat, shopper, view_state]
                        b_ni.click(_bind(control, FeedbackKind.NOT_INTERESTED, card.item_id), inputs, outputs)
                        if b_ex is not None:
                            b_ex.click(_bind(control, FeedbackKind.EXCLUDE_PURCHASE, card.driver_id), inputs, outputs)
                        b_up.click(_bind(control, FeedbackKind.HELPFUL, card.item_id), inputs, outputs)
                        b_down.click(_bind(control, FeedbackKind.NOT_HELPFUL, card.item_id), inputs, outputs)

        # No progress overlay: the cards say what is on the way, and an animated overlay for the
        # half minute a slate streams costs a slow machine a core.
        ask.submit(respond, [ask, chat, shopper, view_state], [chat, view_state, history, ask], show_progress="hidden")
        shopper.change(lambda user: ([], None, history_md(user)), [shopper], [chat, view_state, history])
        shop.load(history_md, [shopper], [history])
    return shop


def _bind(control, kind: FeedbackKind, item_id: str):
    """A click handler for one card's control (a named generator, so Gradio streams its updates)."""

    def handler(chat: list, user_id: str, view: SlateView | None):
        yield from control(kind, item_id, chat, user_id, view)

    return handler
