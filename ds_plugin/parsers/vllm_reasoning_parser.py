"""vLLM reasoning parsers for DeepSeek R1 and V3.1: thin adapters over `reasoning`.

`DeepSeekR1ReasoningParser` (`deepseek-r1`, over vLLM's `deepseek_r1`) always thinks.
`DeepSeekV3ReasoningParser` (`deepseek-v3`, over vLLM's `deepseek_v3`) thinks when the
request's `chat_template_kwargs` has `thinking` (SGLang's and V3.1's template key) or
`enable_thinking` set, the same switch the V3.1 chat template renders from.

Both are text-driven (see `reasoning.py`), so they work on the V3 tokenizer too, where
`<think>` is not a single token. Token ids serve only the id-only callers (the
structured-output engine): `is_reasoning_end*`, `extract_content_ids`,
`count_reasoning_tokens`. Unlike vLLM's `deepseek_v3`, the V3 parser built without
request kwargs (how vLLM's ReasoningConfig builds it) still names `<think>`/`</think>`,
so `thinking_token_budget` works with it.

Both fold SGLang's `custom_params.thinking_budget` into `thinking_token_budget` in
`adjust_request` (see `thinking_budget.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ds_plugin._vllm.parsers import DeltaMessage, ReasoningParser, VLLMValidationError
from ds_plugin.parsers.reasoning import ThinkStream, split_reasoning
from ds_plugin.parsers.scan import CALL_BEGIN, CALLS_BEGIN, THINK_END, THINK_START
from ds_plugin.parsers.thinking_budget import BudgetError, resolve_thinking_budget

__all__ = ["DeepSeekR1ReasoningParser", "DeepSeekV3ReasoningParser"]


class DeepSeekR1ReasoningParser(ReasoningParser):
    def __init__(self, tokenizer, *args, **kwargs):
        super().__init__(tokenizer, *args, **kwargs)
        self.thinking = self._thinking(kwargs.get("chat_template_kwargs") or {})
        vocab = self.vocab
        self.start_token_id = vocab.get(THINK_START)
        self.end_token_id = vocab.get(THINK_END)
        # Ids that end the reasoning for id-only callers (mirrors the text rule).
        self._end_ids = {i for i in (self.end_token_id, vocab.get(CALLS_BEGIN),
                                     vocab.get(CALL_BEGIN)) if i is not None}
        self._stream = ThinkStream(self.thinking)
        self._seen = ""
        self._text_driven = False  # set once text arrives: then the text decides
        self._prompt_closed = False

    @staticmethod
    def _thinking(chat_template_kwargs: dict) -> bool:
        return True

    @property
    def reasoning_start_str(self) -> str:
        return THINK_START

    @property
    def reasoning_end_str(self) -> str:
        return THINK_END

    # -- id-based queries

    def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
        # vLLM calls this with the prompt (both serving paths, before parsing), so the
        # verdict is kept: a prompt that already closed the thoughts (V3.1 answering a
        # tool result) makes the non-streaming split agree with the streaming one.
        verdict = not self.thinking
        if self.thinking:
            for token in reversed(input_ids):
                if token == self.start_token_id or token == self.end_token_id:
                    verdict = token == self.end_token_id
                    break
        self._prompt_closed = verdict
        return verdict

    def is_reasoning_end_streaming(self, input_ids: Sequence[int],
                                   delta_ids: Iterable[int]) -> bool:
        if not self.thinking:
            return True
        if self._text_driven:
            return self._stream.reasoning_ended
        return any(token in self._end_ids for token in delta_ids)

    def extract_content_ids(self, input_ids: list[int]) -> list[int]:
        if not self.thinking or self._prompt_closed:
            return list(input_ids)
        for i, token in enumerate(input_ids):
            if token == self.end_token_id:
                return list(input_ids[i + 1:])
            if token in self._end_ids:  # a tool marker: it belongs to the content
                return list(input_ids[i:])
        return []

    def count_reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        if not self.thinking or self._prompt_closed:
            return 0
        start = 1 if token_ids and token_ids[0] == self.start_token_id else 0
        for i, token in enumerate(token_ids):
            if token in self._end_ids:
                return max(0, i - start)
        return max(0, len(token_ids) - start)

    # -- text

    def extract_reasoning(self, model_output: str, request) -> tuple[str | None, str | None]:
        thinking = self.thinking and not self._prompt_closed
        reasoning, content = split_reasoning(model_output, thinking)
        return (reasoning or None) if thinking else None, content or None

    def extract_reasoning_streaming(self, previous_text: str, current_text: str,
                                    delta_text: str, previous_token_ids: Sequence[int],
                                    current_token_ids: Sequence[int],
                                    delta_token_ids: Sequence[int]):
        self._text_driven = True
        if current_text.startswith(self._seen):
            new_text = current_text[len(self._seen):]
        else:
            new_text = delta_text
        self._seen += new_text
        delta = self._stream.feed(new_text)
        if not delta:
            return None
        return DeltaMessage(reasoning=delta.reasoning or None,
                                 content=delta.content or None)

    # -- request

    def adjust_request(self, request):
        extra = getattr(request, "model_extra", None) or {}
        try:
            budget = resolve_thinking_budget(getattr(request, "thinking_token_budget", None),
                                             extra.get("custom_params"),
                                             getattr(request, "vllm_xargs", None))
        except BudgetError as e:
            raise VLLMValidationError(str(e), parameter=e.parameter, value=e.value) from e
        if budget is not None and hasattr(request, "thinking_token_budget"):
            request.thinking_token_budget = budget
        return request


class DeepSeekV3ReasoningParser(DeepSeekR1ReasoningParser):
    @staticmethod
    def _thinking(chat_template_kwargs: dict) -> bool:
        return bool(chat_template_kwargs.get("thinking")
                    or chat_template_kwargs.get("enable_thinking"))
