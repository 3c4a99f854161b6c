"""The staff views, mounted behind a login: Support (why did an item appear, or not, for a shopper,
from the impression log) and Prompt lab (edit a template, compare it with the current one, save it
as the next version)."""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr

from whyrec.core.config import Settings
from whyrec.core.errors import WhyrecError
from whyrec.core.protocol import ImpressionItemRecord, ImpressionRecord
from whyrec.core.schema import FactTable, WhyNot
from whyrec.pipeline import GroundingVerdict, check_reason, compare_templates, parse_template, sample_tables, save_folder, save_new_version
from whyrec.service.service import WhyrecService

IMPRESSION_COLUMNS = ["served at (UTC)", "impression", "kind", "position", "rank", "source", "grounded", "prompt version"]
METRIC_COLUMNS = ["template", "grounded rate", "fallback rate", "USR", "mean words", "s / item"]
CLAIM_COLUMNS = ["claim", "words", "matched", "fact", "why not"]


def claim_rows(verdict: GroundingVerdict, table: FactTable) -> list[list]:
    """One row per claim the sentence makes: the fact that states it, or why none does."""
    return [
        [c["kind"], c["words"], "yes" if c["matched"] else "no", f"{c['fact_id']}: {c['fact_text']}" if c["matched"] else "", c["problem"] or ""]
        for c in verdict.to_dict(table)["claims"]
    ]


def parse_time(text: str) -> datetime | None:
    """'' -> None; an ISO 8601 date or time (naive = UTC)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise WhyrecError(f"time '{text}' is not an ISO 8601 date or time (e.g. 2026-11-24 or 2026-11-24T15:30)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def impression_rows(records: list[ImpressionRecord], item_id: str) -> list[list]:
    rows = []
    for r in records:
        for i in r.items:
            if i.item_id == item_id:
                rows.append([r.served_at.strftime("%Y-%m-%d %H:%M:%S"), r.impression_id, r.kind, i.position, i.rank, i.source, i.grounded, i.prompt_version])
    return rows


def record_html(record: ImpressionRecord, item: ImpressionItemRecord, titles: dict[str, str]) -> str:
    """Everything the log holds for one shown item, as recorded (not re-run)."""
    verdict = "passed the grounding check" if item.grounded else "failed the check; the template sentence was shown"
    facts = "".join(
        f"<tr><td><code>{html.escape(f.id)}</code></td><td>{html.escape(f.kind)}</td><td>{html.escape(f.text)}</td>"
        f"<td>{'cited' if f.id in item.cited_fact_ids else ''}</td></tr>"
        for f in item.fact_table
    )
    features = ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in item.features.items())
    prompt = "\n\n".join(f"[{m.role}]\n{m.content}" for m in item.prompt)
    attempts = "".join(
        f"<li>attempt {n}: <b>{'passed' if a.passed else 'failed'}</b> ({html.escape(a.reason)})<pre class='raw-output'>{html.escape(a.raw_output)}</pre></li>"
        for n, a in enumerate(item.attempts, start=1)
    ) or "<li>no model answer (template only)</li>"
    counterfactual = [f.text for f in item.fact_table if f.kind == "counterfactual"] or [
        f'Without "{titles.get(a.history_item_id, a.history_item_id)}" it would rank #{a.rank_without} instead of #{item.rank}.'
        for a in item.attributions[:1]
        if a.rank_without is not None
    ]
    return (
        f'<div id="support-record-body"><h3>{html.escape(item.title)} <small>(item {html.escape(item.item_id)})</small></h3>'
        f"<p>Shown to <b>{html.escape(record.user_id)}</b> at {record.served_at:%Y-%m-%d %H:%M:%S} UTC in impression <code>{record.impression_id}</code>, "
        f"position {item.position}, rank #{item.rank} of {item.candidates_scored}.</p>"
        f'<p class="shown-text"><b>Shown text:</b> {html.escape(item.text)}</p>'
        f"<p><b>Grounding verdict:</b> {verdict}. Source: {item.source}. Prompt version <code>{html.escape(item.prompt_version)}</code>, model <code>{html.escape(item.model)}</code>.</p>"
        f"<p><b>Scores:</b> retrieval {item.retrieval_score:.3f}, ranker {item.ranker_score:.3f}; per source: {features}</p>"
        f"<h4>History attributions</h4>{attribution_chart(item, titles)}"
        f"<h4>Counterfactual</h4><p>{html.escape(' '.join(counterfactual) or 'none recorded')}</p>"
        f"<h4>Fact table</h4><table class='fact-table'><tr><th>id</th><th>kind</th><th>fact</th><th></th></tr>{facts}</table>"
        f"<h4>Exact prompt</h4><pre class='prompt'>{html.escape(prompt)}</pre>"
        f"<h4>Raw model output</h4><ol>{attempts}</ol></div>"
    )


def attribution_chart(item: ImpressionItemRecord, titles: dict[str, str]) -> str:
    """Horizontal bars: how much each recent history item raised (or lowered) the item's score."""
    if not item.attributions:
        return "<p>none</p>"
    scale = max(abs(a.contribution) for a in item.attributions) or 1.0
    bars = []
    for a in item.attributions:
        width = int(100 * abs(a.contribution) / scale)
        colour = "#2e7d32" if a.contribution >= 0 else "#c62828"
        name = html.escape(titles.get(a.history_item_id, a.history_item_id)[:70])
        without = f", #{a.rank_without} without it" if a.rank_without is not None else ""
        bars.append(
            f'<div class="attr-row"><div class="attr-name">{name}</div><div class="attr-track">'
            f'<div class="attr-bar" style="width:{width}%;background:{colour}"></div></div>'
            f'<div class="attr-value">{a.contribution:+.3f}{without}</div></div>'
        )
    return '<div class="attribution-chart">' + "".join(bars) + "</div>"


def why_not_html(w: WhyNot) -> str:
    state = f"shown (#{w.item.rank} in the top {w.k})" if w.shown else f"not shown: #{w.item.rank} of {w.item.candidates_scored}, top {w.k} are shown"
    last = f"last shown item's score {w.last_shown.ranker_score:.3f}, this item's {w.item.ranker_score:.3f}, gap {w.score_gap:+.3f}" if w.last_shown else ""
    changes = "".join(f"<li>{html.escape(c.text)}</li>" for c in w.changes) or "<li>nothing: it is shown</li>"
    facts = "".join(f"<li><code>{html.escape(f.fact_id)}</code> {html.escape(f.text)}</li>" for f in w.fact_table.facts)
    return (
        f'<div id="support-whynot-body"><h3>Why not “{html.escape(w.title)}”? (computed now, not from the log)</h3>'
        f"<p><b>{state}</b>. {last}</p><h4>What would change it</h4><ul>{changes}</ul><h4>Fact table now</h4><ul>{facts}</ul></div>"
    )


CSS = """
.attr-row {display: flex; align-items: center; gap: 8px; margin: 2px 0;}
.attr-name {width: 40%; font-size: 0.85em;}
.attr-track {width: 35%; background: #eee; height: 12px; border-radius: 3px;}
.attr-bar {height: 12px; border-radius: 3px;}
.attr-value {font-size: 0.85em;}
.fact-table td, .fact-table th {padding: 2px 6px; font-size: 0.85em; text-align: left;}
pre.prompt, pre.raw-output {white-space: pre-wrap; font-size: 0.8em; max-height: 260px; overflow: auto;}
"""


def build_staff(service: WhyrecService, settings: Settings) -> gr.Blocks:
    """Both views as tabs: the console of an account with every role (the admin)."""
    with gr.Blocks(title="whyrec staff") as staff:
        gr.Markdown("## whyrec staff console")
        with gr.Tab("Support", elem_id="tab-support"):
            support_view(service, settings)
        with gr.Tab("Prompt lab", elem_id="tab-lab"):
            prompt_lab_view(service, settings)
    return staff


def build_support(service: WhyrecService, settings: Settings) -> gr.Blocks:
    with gr.Blocks(title="whyrec support") as view:
        gr.Markdown("## whyrec support")
        support_view(service, settings)
    return view


def build_prompt_lab(service: WhyrecService, settings: Settings) -> gr.Blocks:
    with gr.Blocks(title="whyrec prompt lab") as view:
        gr.Markdown("## whyrec prompt lab")
        prompt_lab_view(service, settings)
    return view


def support_view(service: WhyrecService, settings: Settings) -> None:
    """The Support view's components and handlers, inside the enclosing Blocks."""
    catalog = service.catalog
    titles = {i: item.title for i, item in catalog.items.items()}

    def lookup(user_id: str, item_id: str, when: str):
        user_id, item_id = (user_id or "").strip(), (item_id or "").strip()
        try:
            if not user_id or not item_id:
                raise WhyrecError("enter a shopper id and an item id")
            catalog.item(item_id)
            until = parse_time(when)
            records = service.impressions(user_id=user_id, item_id=item_id, until=until, limit=50)
        except WhyrecError as exc:
            raise gr.Error(str(exc))
        rows = impression_rows(records, item_id)
        if not records:
            before = f" before {until:%Y-%m-%d %H:%M} UTC" if until else ""
            message = f"<p id='support-none'>Item {html.escape(item_id)} was never shown to shopper {html.escape(user_id)}{before}. Use “Why not?” to see where it ranks now.</p>"
            return rows, message
        record = records[0]  # the newest at or before the given time
        item = next(i for i in record.items if i.item_id == item_id)
        return rows, record_html(record, item, titles)

    def why_not(user_id: str, item_id: str, k: float | None):
        try:
            if k is None:  # the number box was cleared
                raise WhyrecError("enter a slate size from 1 to 50")
            return why_not_html(service.why_not((user_id or "").strip(), (item_id or "").strip(), int(k)))
        except WhyrecError as exc:
            raise gr.Error(str(exc))

    gr.Markdown("Why did an item appear for a shopper (from the impression log), or why not (computed now)?")
    with gr.Row():
        s_user = gr.Textbox(label="Shopper id", elem_id="support-shopper")
        s_item = gr.Textbox(label="Item id", elem_id="support-item")
        s_time = gr.Textbox(label="At or before (UTC, optional)", placeholder="2026-11-24 15:30", elem_id="support-time")
        s_k = gr.Number(value=settings.shop_k, label="Slate size", precision=0, minimum=1, maximum=50, elem_id="support-k")
    with gr.Row():
        s_lookup = gr.Button("Look up impressions", variant="primary", elem_id="support-lookup")
        s_whynot = gr.Button("Why not?", elem_id="support-whynot")
    s_table = gr.Dataframe(headers=IMPRESSION_COLUMNS, label="Impressions that showed it (newest first)", elem_id="support-impressions", interactive=False)
    s_record = gr.HTML(elem_id="support-record")
    s_why = gr.HTML(elem_id="support-why-not")
    s_lookup.click(lookup, [s_user, s_item, s_time], [s_table, s_record])
    s_whynot.click(why_not, [s_user, s_item, s_k], [s_why])


def prompt_lab_view(service: WhyrecService, settings: Settings) -> None:
    """The Prompt lab's components and handlers, inside the enclosing Blocks."""
    prompts_dir = save_folder(settings)
    current = service.recommender.explainer.template

    def run_lab(text: str, shoppers: float, progress=gr.Progress()):
        try:
            parse_template(text, source="the edited template")  # refused before any shopper is ranked
            progress(0.1, desc="ranking the sample shoppers")
            tables, item_titles = sample_tables(service.recommender, int(shoppers))
            progress(0.3, desc="generating with both templates")
            result = compare_templates(service.recommender, text, tables, item_titles)
        except WhyrecError as exc:
            raise gr.Error(str(exc))
        metrics = []
        for name, run in ((f"{result.current.label} (current)", result.current), (f"{result.candidate.label} (edited)", result.candidate)):
            m = run.metrics()
            metrics.append([name, round(m.grounded_rate, 3), round(m.fallback_rate, 3), round(m.usr, 3), round(m.mean_words, 1), round(m.seconds_per_item, 2)])
        samples = [
            [t.user_id, title, a.text + ("" if a.grounded else " [template]"), b.text + ("" if b.grounded else " [template]")]
            for t, title, a, b in zip(result.tables, result.titles, result.current.explanations, result.candidate.explanations)
        ]
        return metrics, samples, result.diff

    def save(text: str):
        try:
            spec, path = save_new_version(text, prompts_dir)
        except WhyrecError as exc:
            raise gr.Error(str(exc))
        return f"Saved **{spec.label}** as `{path}`. The service keeps using {current.label} until restarted (the latest version is used when WHYREC_PROMPT_VERSION is unset)."

    gr.Markdown(f"Edit the template, run it next to the current one (**{current.label}**) on the same sample of shoppers, then save it as the next version in `{prompts_dir}`.")
    l_text = gr.Code(Path(current.source).read_text(encoding="utf-8"), language="yaml", label="Template", elem_id="lab-template", interactive=True)
    with gr.Row():
        l_n = gr.Slider(1, 20, value=4, step=1, label="Sample shoppers", elem_id="lab-sample")
        l_run = gr.Button("Run side by side", variant="primary", elem_id="lab-run")
        l_save = gr.Button("Save as new version", elem_id="lab-save")
    l_metrics = gr.Dataframe(headers=METRIC_COLUMNS, label="Metrics", elem_id="lab-metrics", interactive=False)
    l_samples = gr.Dataframe(headers=["shopper", "item", "current", "edited"], label="Side by side", elem_id="lab-samples", interactive=False, wrap=True, column_widths=["8%", "24%", "34%", "34%"])
    l_diff = gr.Code(label="Diff against the current template", elem_id="lab-diff", interactive=False)
    l_status = gr.Markdown(elem_id="lab-status")
    l_run.click(run_lab, [l_text, l_n], [l_metrics, l_samples, l_diff])
    l_save.click(save, [l_text], [l_status])

    def check_sentence(user_id: str, item_id: str, sentence: str):
        try:
            if not sentence.strip():
                raise WhyrecError("write the sentence to check")
            table = service.why_not(user_id.strip(), item_id.strip(), settings.shop_k).fact_table
        except WhyrecError as exc:
            raise gr.Error(str(exc))
        verdict = check_reason(sentence, table)
        outcome = "**passes** the check" if verdict.passed else f"**fails** the check: {html.escape(verdict.reason)}"
        facts = [[f.fact_id, f.kind.value, f.text] for f in table.facts]
        return f"The sentence {outcome}.", claim_rows(verdict, table), facts

    gr.Markdown("### Check a sentence\nThe claims a sentence makes about a shopper's item, each with the fact that states it (the same check every shown reason passes).")
    with gr.Row():
        c_user = gr.Textbox(label="Shopper id", elem_id="lab-check-shopper")
        c_item = gr.Textbox(label="Item id", elem_id="lab-check-item")
    c_text = gr.Textbox(label="Sentence", elem_id="lab-check-text")
    c_run = gr.Button("Check", elem_id="lab-check-run")
    c_verdict = gr.Markdown(elem_id="lab-check-verdict")
    c_claims = gr.Dataframe(headers=CLAIM_COLUMNS, label="Claims", elem_id="lab-check-claims", interactive=False, wrap=True)
    c_facts = gr.Dataframe(headers=["id", "kind", "fact"], label="Fact table", elem_id="lab-check-facts", interactive=False, wrap=True)
    c_run.click(check_sentence, [c_user, c_item, c_text], [c_verdict, c_claims, c_facts])
