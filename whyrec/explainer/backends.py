"""Generator backends behind LangChain's chat-model interface, so ``prompt | model | parser`` and
``.batch()`` read the same for both: in-process transformers (the embedded default) and any
OpenAI-compatible server (vLLM) given by URL."""

from __future__ import annotations

import json
import threading
import urllib.request
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterator

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, PrivateAttr

from whyrec.core.config import Settings
from whyrec.core.errors import ConfigError

_ROLE = {"human": "user", "ai": "assistant", "system": "system"}

# Set by `interruptible` for the calls made inside it, in that thread (and the threads LangChain
# starts from it, which copy the context).
_STOP: ContextVar[Callable[[], bool] | None] = ContextVar("whyrec_generation_stop", default=None)


class GenerationInterrupted(RuntimeError):
    """Generation stopped because the caller's `interruptible` condition became true."""


@contextmanager
def interruptible(stop: Callable[[], bool]) -> Iterator[None]:
    """In-process generation inside this block stops within one decode step once `stop()` is true,
    raising GenerationInterrupted (so nothing half-written is kept); `stop` is called between
    decode steps and may block to pause generation. The background explainer wraps its work in
    it, so that a shopper on the page does not wait for another shopper's batch; a vLLM server
    runs both at once and is not interrupted."""
    token = _STOP.set(stop)
    try:
        yield
    finally:
        _STOP.reset(token)


def stop_requested() -> bool:
    """True inside an `interruptible` block whose condition holds: a generator checks it between steps."""
    stop = _STOP.get()
    return stop is not None and stop()


class TransformersChatModel(BaseChatModel):
    """A local causal LM with a chat template. Greedy decoding, so the same prompt gives the same text.

    ``batch`` pads the prompts together and runs one ``generate``, which is what makes a slate of
    explanations cheap on a CPU; LangChain's default would run them one by one in threads.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_path: str
    adapter_path: str | None = None  # a LoRA adapter from `whyrec explainer tune`, merged in at load
    device: str = "cpu"
    max_new_tokens: int = 60

    _model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _generations: int = PrivateAttr(default=0)
    _prefixes: dict = PrivateAttr(default_factory=dict)  # shared prompt start -> its KV cache
    reuse_prefix: bool = True  # off: every prompt is prefilled whole (the bench's "before")
    prompt_tokens: int = 0  # prompt tokens of all generations so far
    prefilled_tokens: int = 0  # of those, the ones computed (the rest came from a shared start's cache)

    def model_post_init(self, __context: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self._model = AutoModelForCausalLM.from_pretrained(self.model_path).to(self.device)
        except OSError as exc:
            raise ConfigError(f"cannot load the generator from '{self.model_path}' ({exc})") from None
        if self.adapter_path:
            from peft import PeftModel

            try:
                # Merged once, so generation costs the same as without an adapter.
                self._model = PeftModel.from_pretrained(self._model, self.adapter_path).merge_and_unload()
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load the LoRA adapter from '{self.adapter_path}' ({exc})") from None
        self._model.eval()
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token

    @property
    def generations(self) -> int:
        """Answers generated so far (a slate of n counts n)."""
        return self._generations

    @property
    def _llm_type(self) -> str:
        return "whyrec-transformers"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "adapter_path": self.adapter_path, "max_new_tokens": self.max_new_tokens}

    def _prompt(self, messages: list[BaseMessage]) -> str:
        chat = [{"role": _ROLE.get(m.type, "user"), "content": m.content} for m in messages]
        return self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)

    def generate_texts(self, conversations: list[list[BaseMessage]], streamer=None) -> list[str]:
        """Greedy answers for a batch. The prompts' shared start (the instructions, then whatever
        else they have in common) is computed once and its KV cache reused for every row and every
        later batch with the same start; each row is laid out as shared start, padding, own part,
        so the positions (from the attention mask) are those of the unpadded prompt."""
        import torch

        ids = [self._tokenizer(self._prompt(m), add_special_tokens=False)["input_ids"] for m in conversations]
        prefix = self._shared_start(ids) if self.reuse_prefix else ()
        shared = len(prefix)
        pad = self._tokenizer.pad_token_id
        width = max(len(row) for row in ids) - shared
        input_ids = torch.tensor([row[:shared] + [pad] * (width - len(row) + shared) + row[shared:] for row in ids], device=self.device)
        mask = torch.tensor([[1] * shared + [0] * (width - len(row) + shared) + [1] * (len(row) - shared) for row in ids], device=self.device)
        with self._lock, torch.no_grad():
            if stop_requested():
                raise GenerationInterrupted("stopped before it started")
            cache = self._prefix_cache(prefix, len(ids)) if shared else None
            output = self._model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                cache=cache,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                streamer=streamer,
                stopping_criteria=_stopping() if _STOP.get() is not None else None,
            )
        self._generations += len(ids)
        self.prompt_tokens += sum(len(row) for row in ids)
        self.prefilled_tokens += sum(len(row) for row in ids) - (len(ids) * shared if shared else 0)
        new_tokens = output[:, input_ids.shape[1] :]
        return [t.strip() for t in self._tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def _shared_start(self, rows: list[list[int]]) -> tuple[int, ...]:
        """The longest cached start all rows begin with; else, for a batch, the start they share."""
        known = [p for p in self._prefixes if all(len(r) > len(p) and tuple(r[: len(p)]) == p for r in rows)]
        if known:
            return max(known, key=len)
        return tuple(rows[0][: _common_prefix(rows)]) if len(rows) > 1 else ()

    def _prefix_cache(self, prefix: tuple[int, ...], rows: int):
        """A copy, for `rows` rows, of the KV cache of `prefix` (computed once per distinct prefix)."""
        import copy

        import torch
        from transformers import DynamicCache

        if prefix not in self._prefixes:
            cache = DynamicCache()
            self._model(input_ids=torch.tensor([list(prefix)], device=self.device), cache=cache, use_cache=True)
            self._prefixes[prefix] = cache
            while len(self._prefixes) > _PREFIXES_KEPT:
                self._prefixes.pop(next(iter(self._prefixes)))
        self._prefixes[prefix] = self._prefixes.pop(prefix)  # most recently used last
        cache = copy.deepcopy(self._prefixes[prefix])
        cache.batch_repeat_interleave(rows)
        return cache

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        text = self.generate_texts([messages])[0]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        worker = threading.Thread(target=self.generate_texts, args=([messages], streamer), daemon=True)
        worker.start()
        for piece in streamer:
            if piece:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        worker.join()

    def batch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False, **kwargs: Any) -> list[BaseMessage]:
        if len(inputs) <= 1:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        conversations = [self._convert_input(i).to_messages() for i in inputs]
        return [AIMessage(content=text) for text in self.generate_texts(conversations)]


def _stopping():
    """A stopping criterion that raises instead of stopping (stopped rows would read as cut-off
    answers), checked after each decode step."""
    import torch
    from transformers import StoppingCriteriaList

    def interrupt(input_ids, scores, **kwargs):
        if stop_requested():
            raise GenerationInterrupted("stopped during generation")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([interrupt])


_PREFIXES_KEPT = 4  # distinct prompt starts (one per template, in practice)


def _common_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens every row shares, leaving each row at least one token of its own
    (generate needs one uncached token per row)."""
    shortest = min(len(r) for r in rows)
    n = 0
    while n < shortest - 1 and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def make_chat_model(settings: Settings, generator_path: str | None = None) -> tuple[BaseChatModel, str]:
    """The configured backend and the model name to record with each explanation."""
    if settings.llm_url:
        from langchain_openai import ChatOpenAI

        # A server started by `whyrec llm serve --adapter` serves it under the same name the
        # in-process backend records, so explanations and cache keys agree across backends.
        name = settings.llm_model or (tuned_model_name(settings.generator, settings.adapter) if settings.adapter else None)
        name = name or served_model_name(settings.llm_url, settings.llm_api_key, settings.llm_timeout_s)
        model = ChatOpenAI(
            base_url=settings.llm_url,
            api_key=settings.llm_api_key,
            model=name,
            temperature=0.0,
            max_tokens=settings.max_new_tokens,
            timeout=settings.llm_timeout_s,
            max_retries=1,
        )
        return model, name
    if generator_path is None:
        raise ConfigError("no generator: set WHYREC_GENERATOR or WHYREC_LLM_URL")
    adapter = str(settings.adapter) if settings.adapter else None
    model = TransformersChatModel(model_path=generator_path, adapter_path=adapter, device=settings.resolved_device(), max_new_tokens=settings.max_new_tokens)
    return model, tuned_model_name(settings.generator, settings.adapter) if adapter else settings.generator


def tuned_model_name(generator: str, adapter: Path) -> str:
    """The name a generator with a LoRA adapter is served and recorded under."""
    return f"{generator}+{Path(adapter).name}"


def served_model_name(base_url: str, api_key: str, timeout: float) -> str:
    """The first model an OpenAI-compatible server lists under /v1/models."""
    url = base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = json.load(response)
        return data["data"][0]["id"]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise ConfigError(f"cannot list models at {url} ({exc}); is the LLM server running? (or set WHYREC_LLM_MODEL)") from None
