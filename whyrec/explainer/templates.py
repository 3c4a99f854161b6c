"""Versioned prompt templates: one YAML file per version in prompts/ (``<name>.v<version>.yaml``),
loaded as LangChain ChatPromptTemplates."""

from __future__ import annotations

import importlib.resources
import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml
from langchain_core.prompts import ChatPromptTemplate

from whyrec.core.errors import ConfigError
from whyrec.core.schema import FactKind

_FILE = re.compile(r"^(?P<name>[a-z0-9_-]+)\.v(?P<version>\d+)\.yaml$")
_ROLES = {"system", "human", "user", "ai", "assistant"}
# What the explainer fills in (explainer.prompt_variables); anything else would reach the generator
# unfilled or fail at run time, so a template may only use these.
TEMPLATE_VARIABLES = ("facts", "item_title")
_PLACEHOLDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Jinja left in an f-string template is sent to the model as literal text: refused, so nobody
# believes it is evaluated ("{{ x }}" is a Jinja expression; '{{"text": ...}}' is a literal brace).
_JINJA = re.compile(r"\{%|%\}|\{#|\{\{\s*[A-Za-z_][^{}]*\}\}")


@dataclass(frozen=True)
class PromptTemplateSpec:
    name: str
    version: int
    description: str
    variables: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]  # (role, content with {variables})
    source: str
    fact_kinds: tuple[FactKind, ...] = tuple(FactKind)  # which facts the prompt shows (the check uses all)
    # How many history items the prompt tells the generator about (None = all in the table): one
    # keeps a small model from giving one item's count or maker to another.
    history_items: int | None = None
    # The prompt shows the two items as slots, the answer gets their titles back (explainer/slots.py).
    name_slots: bool = False

    @property
    def label(self) -> str:
        return f"{self.name}.v{self.version}"

    def chat_prompt(self) -> ChatPromptTemplate:
        return ChatPromptTemplate.from_messages(list(self.messages))


def builtin_prompt_dir():
    return importlib.resources.files("whyrec.prompts")


def available_templates(extra_dirs: list[Path] = ()) -> dict[str, dict[int, object]]:
    """name -> version -> file, over the built-in folder and any extra folders (later ones win)."""
    found: dict[str, dict[int, object]] = {}
    for folder in [builtin_prompt_dir(), *extra_dirs]:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            match = _FILE.match(entry.name)
            if match:
                found.setdefault(match["name"], {})[int(match["version"])] = entry
    return found


def load_template(name: str, version: int | None = None, extra_dirs: list[Path] = ()) -> PromptTemplateSpec:
    versions = available_templates(extra_dirs).get(name)
    if not versions:
        raise ConfigError(f"no prompt template named '{name}' in prompts/ (files are named {name}.v<N>.yaml)")
    chosen = max(versions) if version is None else version
    if chosen not in versions:
        raise ConfigError(f"prompt template '{name}' has no version {chosen} (available: {sorted(versions)})")
    return parse_template(versions[chosen].read_text(encoding="utf-8"), source=str(versions[chosen]))


def parse_template(text: str, source: str = "<text>") -> PromptTemplateSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with name, version, variables and messages")
    for key in ("name", "version", "variables", "messages"):
        if key not in data:
            raise ConfigError(f"{source}: missing '{key}'")
    if not isinstance(data["version"], int) or data["version"] < 1:
        raise ConfigError(f"{source}: 'version' must be a positive integer")
    variables = data["variables"]
    if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables):
        raise ConfigError(f"{source}: 'variables' must be a list of names")
    unknown = sorted(set(variables) - set(TEMPLATE_VARIABLES))
    if unknown:
        raise ConfigError(f"{source}: unknown variables {unknown}: a template may use only {list(TEMPLATE_VARIABLES)}")
    if data.get("template_format", "f-string") != "f-string":
        raise ConfigError(f"{source}: template_format {data['template_format']!r} is not supported: templates are f-strings with {{variable}} placeholders")
    if not isinstance(data["messages"], list):
        raise ConfigError(f"{source}: 'messages' must be a list of {{role, content}}")
    messages = []
    for i, message in enumerate(data["messages"]):
        if not isinstance(message, dict) or message.get("role") not in _ROLES or not isinstance(message.get("content"), str):
            raise ConfigError(f"{source}: messages[{i}] needs a role ({', '.join(sorted(_ROLES))}) and a string content")
        _check_placeholders(message["content"], f"{source}: messages[{i}]")
        messages.append((message["role"], message["content"]))
    if not messages:
        raise ConfigError(f"{source}: 'messages' is empty")
    try:
        fact_kinds = tuple(FactKind(k) for k in data.get("fact_kinds") or [k.value for k in FactKind])
    except (ValueError, TypeError):
        allowed = ", ".join(k.value for k in FactKind)
        raise ConfigError(f"{source}: 'fact_kinds' must list fact kinds from: {allowed}") from None
    history_items = data.get("history_items")
    if history_items is not None and (not isinstance(history_items, int) or isinstance(history_items, bool) or history_items < 1):
        raise ConfigError(f"{source}: 'history_items' must be a positive integer (how many history items the prompt shows), or left out for all")
    name_slots = data.get("name_slots", False)
    if not isinstance(name_slots, bool) or (name_slots and history_items != 1):
        raise ConfigError(f"{source}: 'name_slots' must be true or false, and true only with 'history_items: 1' (one history item, one slot)")
    spec = PromptTemplateSpec(
        name=str(data["name"]),
        version=data["version"],
        description=str(data.get("description", "")),
        variables=tuple(variables),
        messages=tuple(messages),
        source=source,
        fact_kinds=fact_kinds,
        history_items=history_items,
        name_slots=name_slots,
    )
    try:
        used = set(spec.chat_prompt().input_variables)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{source}: malformed message template ({exc})") from None
    if used != set(variables):
        missing, extra = sorted(used - set(variables)), sorted(set(variables) - used)
        raise ConfigError(f"{source}: variables do not match the messages (used but not declared: {missing}; declared but unused: {extra})")
    if "facts" not in used:
        raise ConfigError(f"{source}: the messages never use {{facts}}: the generator would have nothing to ground its answer on")
    return spec


def _check_placeholders(content: str, where: str) -> None:
    """Only bare {name} placeholders: no attribute or index access, conversions, format specs or Jinja."""
    jinja = _JINJA.search(content)
    if jinja:
        raise ConfigError(f"{where}: {jinja.group(0)!r} is Jinja syntax, which these templates do not evaluate: use {{facts}}-style placeholders (write {{{{ and }}}} for a literal brace)")
    try:
        fields = [(name, conversion, spec) for _, name, spec, conversion in string.Formatter().parse(content) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}: malformed placeholder ({exc}); write {{{{ and }}}} for a literal brace") from None
    for name, conversion, spec in fields:
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not _PLACEHOLDER.match(name) or conversion or spec:
            raise ConfigError(f"{where}: placeholder {shown} is not allowed: only a bare variable name such as {{facts}} (no attribute or index access, conversion or format spec)")
