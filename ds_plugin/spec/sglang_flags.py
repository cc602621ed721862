"""SGLang's speculative-decoding launch flags, translated to vLLM's `--speculative-config`.

SGLang serves DeepSeek's MTP layer as EAGLE-style drafting:

    --speculative-algorithm EAGLE|NEXTN --speculative-num-steps N
    --speculative-eagle-topk 1 --speculative-num-draft-tokens N+1

vLLM's equivalent is `--speculative-config '{"method": "mtp", "num_speculative_tokens": N}'`
(one chain of N drafted tokens, verified with one bonus token: SGLang's N + 1 draft tokens).
vLLM's MTP path drafts a chain, not a tree, so a top-k above 1 is refused, as is anything
this translation would otherwise have to guess. Pure functions, no vLLM import: the CLI
calls `rewrite_sglang_speculative(argv)` on the flags it passes to vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

ALGORITHM = "--speculative-algorithm"
NUM_STEPS = "--speculative-num-steps"
EAGLE_TOPK = "--speculative-eagle-topk"
NUM_DRAFT_TOKENS = "--speculative-num-draft-tokens"
FLAGS = (ALGORITHM, NUM_STEPS, EAGLE_TOPK, NUM_DRAFT_TOKENS)
VLLM_FLAG = "--speculative-config"

# SGLang's names for drafting with the checkpoint's own MTP layer (NEXTN is its alias of
# EAGLE for DeepSeek); the others (EAGLE3, STANDALONE, NGRAM) need a separate draft model
# or are not MTP.
MTP_ALGORITHMS = ("EAGLE", "NEXTN")
# What SGLang picks for DeepSeek-V3/R1 when only the algorithm is given (steps 3, top-k 1,
# 4 draft tokens).
DEFAULT_STEPS = 3


class SpeculativeFlagError(ValueError):
    """A speculative flag vLLM cannot honour; the message names the flag."""


def sglang_speculative_to_vllm(args: Mapping[str, Any] | Any) -> dict | None:
    """vLLM's speculative config for SGLang's flags, or None when none is given.

    `args` maps the flags' argparse names (`speculative_algorithm`, `speculative_num_steps`,
    `speculative_eagle_topk`, `speculative_num_draft_tokens`) to values (strings or ints,
    None or absent when not given); a Namespace works too.
    """
    get = args.get if isinstance(args, Mapping) else (lambda k: getattr(args, k, None))
    algo, steps, topk, drafts = (get(f.removeprefix("--").replace("-", "_")) for f in FLAGS)
    if algo is None:
        given = [f for f, v in zip(FLAGS[1:], (steps, topk, drafts)) if v is not None]
        if given:
            raise SpeculativeFlagError(f"{given[0]} needs {ALGORITHM} "
                                       f"({' or '.join(MTP_ALGORITHMS)})")
        return None
    if str(algo).upper() not in MTP_ALGORITHMS:
        raise SpeculativeFlagError(
            f"{ALGORITHM} {algo}: ds-plugin serves DeepSeek's own MTP layer only "
            f"({' or '.join(MTP_ALGORITHMS)}); use vLLM's {VLLM_FLAG} for other drafters")
    steps = _positive(NUM_STEPS, steps, DEFAULT_STEPS)
    if _positive(EAGLE_TOPK, topk, 1) != 1:
        raise SpeculativeFlagError(
            f"{EAGLE_TOPK} {topk}: tree drafting (top-k > 1) is not supported; vLLM's MTP "
            f"path drafts one chain, so use {EAGLE_TOPK} 1")
    if _positive(NUM_DRAFT_TOKENS, drafts, steps + 1) != steps + 1:
        raise SpeculativeFlagError(
            f"{NUM_DRAFT_TOKENS} {drafts}: with {EAGLE_TOPK} 1 a chain of {NUM_STEPS} {steps} "
            f"verifies {steps + 1} tokens; pass {NUM_DRAFT_TOKENS} {steps + 1} or leave it out")
    return {"method": "mtp", "num_speculative_tokens": steps}


def _positive(flag: str, value, default: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise SpeculativeFlagError(f"{flag} {value!r}: not an integer") from None
    if n < 1:
        raise SpeculativeFlagError(f"{flag} {value}: must be at least 1")
    return n


def rewrite_sglang_speculative(argv: list[str]) -> list[str]:
    """`argv` with SGLang's speculative flags (`--flag V` or `--flag=V`) replaced by vLLM's
    `--speculative-config JSON`; unchanged when it has none. Refuses a flag given twice, a
    flag without its value, and SGLang flags beside vLLM's own --speculative-config."""
    values: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag not in FLAGS:
            rest.append(arg)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise SpeculativeFlagError(f"{flag} needs a value")
            value, i = argv[i + 1], i + 1
        key = flag.removeprefix("--").replace("-", "_")
        if key in values:
            raise SpeculativeFlagError(f"{flag} given twice")
        values[key] = value
        i += 1
    if not values:
        return rest
    if any(a == VLLM_FLAG or a.startswith(VLLM_FLAG + "=") for a in rest):
        raise SpeculativeFlagError(f"{VLLM_FLAG} and SGLang's {ALGORITHM} flags together: "
                                   "pass one of the two")
    config = sglang_speculative_to_vllm(values)
    return rest + [VLLM_FLAG, json.dumps(config)] if config else rest
