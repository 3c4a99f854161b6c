"""Versioned prompt templates: one YAML file per version in prompts/ (``<name>.v<version>.yaml``),
loaded as LangChain ChatPromptTemplates."""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from langchain_core.prompts import ChatPromptTemplate

from whyrec.errors import ConfigError
from whyrec.schema import FactKind

_FILE = re.compile(r"^(?P<name>[a-z0-9_-]+)\.v(?P<version>\d+)\.yaml$")
_ROLES = {"system", "human", "user", "ai", "assistant"}


@dataclass(frozen=True)
class PromptTemplateSpec:
    name: str
    version: int
    description: str
    variables: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]  # (role, content with {variables})
    source: str
    fact_kinds: tuple[FactKind, ...] = tuple(FactKind)  # which facts the prompt shows (the check uses all)

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
    messages = []
    for i, message in enumerate(data["messages"] or []):
        if not isinstance(message, dict) or message.get("role") not in _ROLES or not isinstance(message.get("content"), str):
            raise ConfigError(f"{source}: messages[{i}] needs a role ({', '.join(sorted(_ROLES))}) and a string content")
        messages.append((message["role"], message["content"]))
    if not messages:
        raise ConfigError(f"{source}: 'messages' is empty")
    try:
        fact_kinds = tuple(FactKind(k) for k in data.get("fact_kinds") or [k.value for k in FactKind])
    except (ValueError, TypeError):
        allowed = ", ".join(k.value for k in FactKind)
        raise ConfigError(f"{source}: 'fact_kinds' must list fact kinds from: {allowed}") from None
    spec = PromptTemplateSpec(
        name=str(data["name"]),
        version=data["version"],
        description=str(data.get("description", "")),
        variables=tuple(variables),
        messages=tuple(messages),
        source=source,
        fact_kinds=fact_kinds,
    )
    try:
        used = set(spec.chat_prompt().input_variables)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{source}: malformed message template ({exc})") from None
    if used != set(variables):
        missing, extra = sorted(used - set(variables)), sorted(set(variables) - used)
        raise ConfigError(f"{source}: variables do not match the messages (used but not declared: {missing}; declared but unused: {extra})")
    return spec
