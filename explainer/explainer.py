"""Turns fact tables into shown explanations: a slate goes to the generator as one batch, every
answer is checked against its facts, failures get one corrective retry, and what still fails is
replaced by the deterministic template sentence. Explanations are cached by (shopper state, item,
template version, model)."""

from __future__ import annotations

from typing import Iterator

from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from whyrec.explainer.cache import ExplanationCache, cache_key
from whyrec.explainer.facts import template_sentence
from whyrec.explainer.grounding import check_grounding, cited_facts
from whyrec.explainer.parsing import ExplanationParser, ParsedAnswer
from whyrec.explainer.templates import PromptTemplateSpec
from whyrec.schema import Attempt, Explanation, ExplanationSource, FactTable

RETRY_INSTRUCTION = (
    "That note was rejected because it {reason}. Write the note again, using only words and names from the facts."
)


class Explainer:
    def __init__(
        self,
        chat_model: BaseChatModel,
        template: PromptTemplateSpec,
        model_name: str,
        concurrency: int = 8,
        cache: ExplanationCache | None = None,
    ):
        self.chat_model = chat_model
        self.template = template
        self.model_name = model_name
        self.concurrency = concurrency
        self.cache = cache if cache is not None else ExplanationCache()
        self.parser = ExplanationParser()
        prompt = template.chat_prompt()
        self.chain = prompt | chat_model | StrOutputParser()
        retry_prompt = ChatPromptTemplate.from_messages(
            [*prompt.messages, ("ai", "{previous}"), ("human", RETRY_INSTRUCTION)]
        )
        self.retry_chain = retry_prompt | chat_model | StrOutputParser()

    def with_template(self, template: PromptTemplateSpec) -> "Explainer":
        """The same generator and cache with another template (say, the support-agent wording);
        the template version is part of the cache key, so the two never mix."""
        return Explainer(self.chat_model, template, self.model_name, self.concurrency, self.cache)

    def variables(self, table: FactTable) -> dict[str, str]:
        return prompt_variables(self.template, table)

    def render(self, table: FactTable) -> list[tuple[str, str]]:
        """The exact messages the generator receives for this table (for the support console)."""
        return render_prompt(self.template, table)

    def explain(self, tables: list[FactTable]) -> list[Explanation]:
        keys = [cache_key(t, self.template.label, self.model_name) for t in tables]
        cached = {i: hit for i, key in enumerate(keys) if (hit := self.cache.get(key)) is not None}
        todo = [i for i in range(len(tables)) if i not in cached]
        fresh = dict(zip(todo, self._generate([tables[i] for i in todo])))
        for i, explanation in fresh.items():
            self.cache.put(keys[i], explanation)
        return [cached[i] if i in cached else fresh[i] for i in range(len(tables))]

    def stream(self, table: FactTable) -> Iterator[str]:
        """The generator's raw answer for one table as it is written (for the prompt lab and the
        support console; a shopper is shown only what `explain` returns, after the check)."""
        yield from self.chain.stream(self.variables(table))

    def _generate(self, tables: list[FactTable]) -> list[Explanation]:
        if not tables:
            return []
        config = {"max_concurrency": self.concurrency}
        inputs = [self.variables(t) for t in tables]
        attempts: list[list[Attempt]] = [[] for _ in tables]
        accepted: dict[int, ParsedAnswer] = {}
        retry: list[int] = []
        for i, raw in enumerate(self.chain.batch(inputs, config=config, return_exceptions=True)):
            answer, attempt = self.judge(raw, tables[i])
            attempts[i].append(attempt)
            if attempt.passed:
                accepted[i] = answer
            elif not isinstance(raw, Exception):
                retry.append(i)

        if retry:
            retry_inputs = [{**inputs[i], "previous": attempts[i][0].text or attempts[i][0].raw_output, "reason": _reason_phrase(attempts[i][0].reason)} for i in retry]
            for i, raw in zip(retry, self.retry_chain.batch(retry_inputs, config=config, return_exceptions=True)):
                answer, attempt = self.judge(raw, tables[i])
                attempts[i].append(attempt)
                if attempt.passed:
                    accepted[i] = answer

        explanations = []
        for i, table in enumerate(tables):
            if i in accepted:
                answer = accepted[i]
                by_id = table.by_id()
                ids = [f for f in answer.fact_ids if f in by_id] or cited_facts(answer.text, table)
                explanations.append(
                    Explanation(answer.text, ExplanationSource.LLM, True, tuple(by_id[f] for f in ids), self.template.label, self.model_name, tuple(attempts[i]))
                )
            else:
                text, facts = template_sentence(table)
                explanations.append(
                    Explanation(text, ExplanationSource.TEMPLATE, False, facts, self.template.label, self.model_name, tuple(attempts[i]))
                )
        return explanations

    def judge(self, raw: str | Exception, table: FactTable) -> tuple[ParsedAnswer | None, Attempt]:
        if isinstance(raw, Exception):
            # The generator is down or timed out: recorded, and the template sentence is shown.
            reason = f"generator unavailable: {type(raw).__name__}: {str(raw)[:200]}"
            return None, Attempt(raw_output="", text="", passed=False, reason=reason)
        answer = self.parser.parse(raw)
        verdict = check_grounding(answer.text, table)
        return answer, Attempt(raw_output=raw, text=answer.text, passed=verdict.passed, reason=verdict.reason)


def prompt_variables(template: PromptTemplateSpec, table: FactTable) -> dict[str, str]:
    facts = "\n".join(f"[{f.fact_id}] {f.text}" for f in table.facts if f.kind in template.fact_kinds)
    title = next((f.value for f in table.facts if f.kind.value == "item_title"), table.item_id)
    values = {"facts": facts, "item_title": title}
    return {k: values[k] for k in template.variables if k in values}


def render_prompt(template: PromptTemplateSpec, table: FactTable) -> list[tuple[str, str]]:
    """The generator's whole input for this table: equal renders mean equal behaviour."""
    return [(m.type, m.content) for m in template.chat_prompt().format_messages(**prompt_variables(template, table))]


def _reason_phrase(reason: str) -> str:
    if reason.startswith("not in the facts: "):
        return "used words that are not in the facts (" + reason[len("not in the facts: ") :] + ")"
    return reason
