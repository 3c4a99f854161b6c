"""Reads the generator's answer into (text, cited fact ids), tolerating small models' slips:
JSON or not, a label like "Explanation:", quotes around the sentence, trailing chatter."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from langchain_core.output_parsers import BaseOutputParser

_LABEL = re.compile(r"^\s*(?:why you see this|explanation|answer|note|sentence|output)\s*[:\-]\s*", re.IGNORECASE)
_FACT_REF = re.compile(r"\[?\b(F\d{1,3})\b\]?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
MAX_SENTENCES = 2


@dataclass(frozen=True)
class ParsedAnswer:
    raw: str
    text: str
    fact_ids: tuple[str, ...]
    cut_off: bool = False  # a JSON answer that stops inside its text (the token limit): never shown


class ExplanationParser(BaseOutputParser[ParsedAnswer]):
    def parse(self, text: str) -> ParsedAnswer:
        raw = text
        body, fact_ids, cut_off = _from_json(text)
        if body is None:
            body = text
            fact_ids = tuple(dict.fromkeys(_FACT_REF.findall(text)))
        body = _FACT_REF.sub("", body)
        # A JSON answer's text is one string: a stray newline in it is not the end of the answer.
        lines = [line.strip() for line in body.strip().splitlines() if line.strip()]
        body = _LABEL.sub("", lines[0]) if lines else ""
        body = body.strip().strip('"“”\'').strip()
        sentences = _SENTENCE_END.split(body)
        body = " ".join(sentences[:MAX_SENTENCES]).strip()
        body = re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"\(\s*\)", "", body))
        return ParsedAnswer(raw=raw, text=" ".join(body.split()), fact_ids=fact_ids, cut_off=cut_off)

    @property
    def _type(self) -> str:
        return "whyrec-explanation"


# The "text" field of a JSON answer that does not parse: unescaped quotes inside, or cut off by
# the token limit before the closing brace.
_LOOSE_TEXT = re.compile(r'"text"\s*:\s*"(?P<text>.*?)"?\s*(?:,\s*"(?:facts|fact_ids)"|\}|$)', re.DOTALL)


def _from_json(text: str) -> tuple[str | None, tuple[str, ...], bool]:
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match:
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("text"), str):
            facts = data.get("facts") or data.get("fact_ids") or []
            if not isinstance(facts, list):
                facts = [facts]
            return data["text"], tuple(str(f) for f in facts if isinstance(f, (str, int))), False
    loose = _LOOSE_TEXT.search(text)
    if not loose:
        return None, (), False
    rest = text[loose.end("text") :]
    # No closing quote after the text: the answer ran out of tokens inside it.
    cut_off = not rest.lstrip().startswith('"')
    return loose.group("text").replace('\\"', '"'), tuple(dict.fromkeys(_FACT_REF.findall(rest))), cut_off
