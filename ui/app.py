"""The Gradio app: pick a shopper, see their recent history and their recommendations, each with
its "why you see this" and the facts behind it; ask about any item."""

from __future__ import annotations

import html

import gradio as gr

from whyrec.errors import WhyrecError
from whyrec.schema import RecommendedItem

MAX_SHOPPERS_LISTED = 500


def item_card(entry: RecommendedItem) -> str:
    e = entry.explanation
    badge = "written by the model, checked against the facts" if e.source.value == "llm" else "template sentence (the model's text did not pass the check)"
    facts = "".join(f"<li><code>{html.escape(f.fact_id)}</code> {html.escape(f.text)}</li>" for f in e.facts)
    return (
        f'<div class="whyrec-card" data-item-id="{html.escape(entry.item_id)}">'
        f"<h4>#{entry.ranked.rank} {html.escape(entry.title)}</h4>"
        f'<p class="whyrec-why"><b>Why you see this:</b> {html.escape(e.text)}</p>'
        f"<details><summary>Evidence ({badge})</summary><ul>{facts}</ul>"
        f"<p>retrieval score {entry.ranked.retrieval_score:.3f}, ranker score {entry.ranked.ranker_score:.3f}</p></details>"
        f"</div>"
    )


def build_app(recommender) -> gr.Blocks:
    catalog = recommender.catalog
    shoppers = catalog.users[:MAX_SHOPPERS_LISTED]

    def history_md(user_id: str) -> str:
        try:
            events = catalog.events(user_id)[-8:]
        except WhyrecError as exc:
            return f"**{exc}**"
        lines = [f"- {e.kind.value}: {catalog.items[e.item_id].title}" for e in reversed(events)]
        return "**Recent activity**\n\n" + "\n".join(lines)

    def show(user_id: str, k: float):
        try:
            result = recommender.recommend(user_id, int(k))
        except WhyrecError as exc:
            raise gr.Error(str(exc))
        return history_md(user_id), "".join(item_card(e) for e in result.items)

    def why(user_id: str, item_id: str):
        try:
            return item_card(recommender.explain(user_id, item_id.strip()))
        except WhyrecError as exc:
            raise gr.Error(str(exc))

    with gr.Blocks(title="whyrec") as blocks:
        gr.Markdown(f"# whyrec\nRecommendations with a true reason. Data: **{catalog.name}** ({len(catalog.items)} items, {len(catalog.users)} shoppers).")
        with gr.Row():
            shopper = gr.Dropdown(shoppers, value=shoppers[0] if shoppers else None, label="Shopper", allow_custom_value=True, elem_id="shopper")
            k = gr.Slider(1, 10, value=5, step=1, label="How many")
            go = gr.Button("Recommend", variant="primary", elem_id="recommend")
        history = gr.Markdown(elem_id="history")
        cards = gr.HTML(elem_id="cards")
        with gr.Row():
            item = gr.Textbox(label="Why (or why not) this item? Item id", elem_id="why-item")
            ask = gr.Button("Explain", elem_id="explain")
        answer = gr.HTML(elem_id="why-answer")
        go.click(show, [shopper, k], [history, cards])
        ask.click(why, [shopper, item], [answer])
        item.submit(why, [shopper, item], [answer])
    return blocks
