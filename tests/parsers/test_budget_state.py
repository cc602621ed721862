"""ds_plugin/patches/thinking_budget.py on vLLM's own V1 budget state (the CPU build's).

The state is driven as the V1 sampler drives it: the batch update adds the request (its
prompt and live output list), then each step `update_state` then `apply_to_logits`,
and the sampled token is appended. A stand-in model prefers one token per step; the
budget state overrides it with `</think>` when the budget runs out. Real R1 token ids.
"""

from __future__ import annotations

import pytest
import torch

from ds_plugin.parsers.thinking_budget import OPENS_WITH_OUTPUT

pytest.importorskip("vllm")

START, END, NL = 128798, 128799, 201  # <think>, </think>, "\n" in the R1 tokenizer
T = 1000  # a thought token
VOCAB = 129280


@pytest.fixture(scope="module")
def holder_cls():
    import ds_plugin
    from ds_plugin._vllm.parsers import ThinkingBudgetStateHolder

    ds_plugin.register()  # applies the patch, as in every vLLM process
    return ThinkingBudgetStateHolder


def prompt_of(template_end: list[int]) -> list[int]:
    # <｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜> + what the template adds
    return [0, 128803, 6366, 128804, *template_end]


def run(holder_cls, prompt, budget, wants, marked=True, steps=10):
    from types import SimpleNamespace

    from tests.helpers.vllm_api import BatchUpdate, SamplingParams

    config = SimpleNamespace(reasoning_start_token_ids=[START], reasoning_end_token_ids=[END])
    holder = holder_cls(config, 4, 0, torch.device("cpu"), False)
    params = SamplingParams(thinking_token_budget=budget,
                            extra_args={OPENS_WITH_OUTPUT: True} if marked else None)
    output: list[int] = []
    holder.sync_batch(BatchUpdate(batch_size=1, removed=[], moved=[],
                                  added=[(0, params, prompt, output)]))
    for step in range(steps):
        logits = torch.zeros(1, VOCAB)
        logits[0, wants[min(step, len(wants) - 1)]] = 100.0
        holder.update_state([output], None)
        output.append(int(holder.apply_to_logits(logits, False, None).argmax()))
    return output


@pytest.mark.parametrize("budget", [0, 1, 3])
def test_thoughts_opened_by_the_output_start_are_budgeted(holder_cls, budget):
    # R1 after a tool result, or any template that writes no <think>: the parser reads
    # the output as thoughts from its first token.
    out = run(holder_cls, prompt_of([]), budget, [T])
    assert out[:budget + 1] == [T] * budget + [END]


@pytest.mark.parametrize("budget", [0, 1, 3])
def test_a_think_tag_in_the_output_or_the_prompt_counts_as_vllm_counts_it(holder_cls, budget):
    def cut(tokens):
        return tokens[:tokens.index(END) + 1]

    # The model writes <think>\n itself: counted from its tag, as vLLM counts.
    in_output = cut(run(holder_cls, prompt_of([]), budget, [START, NL, T]))
    # R1-0528's template puts <think>\n in the prompt: the same thought, cut at the
    # same token.
    in_prompt = cut(run(holder_cls, prompt_of([START, NL]), budget, [T]))
    if budget == 0:
        assert in_output == in_prompt == [END]
    else:
        assert in_output == [START, NL] + in_prompt and len(in_output) == budget + 2


def test_a_prompt_that_closed_the_thoughts_is_not_budgeted(holder_cls):
    assert END not in run(holder_cls, prompt_of([END]), 0, [T])  # V3.1, thinking off


def test_unmarked_requests_keep_vllms_behaviour(holder_cls):
    # Without the parser's mark (another parser, /v1/completions) nothing changes.
    assert END not in run(holder_cls, prompt_of([]), 1, [T], marked=False)


def test_apply_is_idempotent(holder_cls):
    from ds_plugin.patches import thinking_budget

    sync, update = holder_cls.sync_batch, holder_cls.update_state
    thinking_budget.apply(holder_cls)
    assert (holder_cls.sync_batch, holder_cls.update_state) == (sync, update)


# -- V2 model runner: vLLM's own budget kernels, run by the Triton interpreter -------------


@pytest.fixture(scope="module")
def v2_kernels():
    """vLLM's V2 thinking-budget module with real Triton in place of vLLM's shim.

    vLLM's CPU build disables Triton (no CPU backend), so its kernels are placeholders
    here; the same source compiled with the real `triton` runs interpreted on CPU
    tensors (TRITON_INTERPRET=1, set by tests/conftest.py on CPU).
    """
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("V2 kernels run here only under the Triton interpreter (CPU)")
    from tests.helpers.vllm_probe import v2_thinking_budget_source

    path, source = v2_thinking_budget_source()
    shim = "from vllm.triton_utils import tl, triton"
    assert source.count(shim) == 1
    namespace = {"__name__": "v2_thinking_budget"}
    exec(compile(source.replace(shim, "import triton\nimport triton.language as tl"),
                 path, "exec"), namespace)
    return namespace["apply_thinking_budget"]


def run_v2(apply_thinking_budget, prompt, budget, wants, marked=True, steps=10):
    # One request in row 0, decoded one token per step as the V2 sampler calls the kernels.
    from ds_plugin.patches.thinking_budget import open_at_prompt_end

    i32 = dict(dtype=torch.int32)
    tokens = torch.zeros(1, len(prompt) + steps, **i32)
    tokens[0, :len(prompt)] = torch.tensor(prompt, **i32)
    total = torch.tensor([len(prompt)], **i32)
    last_start, last_end, scan = (torch.tensor([v], **i32) for v in (-1, -1, 0))
    start, end = torch.tensor([START], **i32), torch.tensor([END], **i32)
    if marked:
        open_at_prompt_end(last_start, scan, 0, tokens[0, :len(prompt)], start, end)
    row, out = torch.zeros(1, **i32), []
    for step in range(steps):
        logits = torch.zeros(1, VOCAB)
        logits[0, wants[min(step, len(wants) - 1)]] = 100.0
        apply_thinking_budget(logits, row, row, torch.tensor([budget], **i32), tokens, total,
                              tokens[0, total[0] - 1:total[0]].clone(), row, last_start,
                              last_end, scan, start, end, end)
        out.append(int(logits.argmax()))
        tokens[0, total[0]] = out[-1]
        total += 1
    return out


@pytest.mark.parametrize("budget", [0, 1, 3])
def test_v2_counts_where_v1_counts(v2_kernels, holder_cls, budget):
    for prompt, wants in [(prompt_of([]), [T]), (prompt_of([]), [START, NL, T]),
                          (prompt_of([START, NL]), [T]), (prompt_of([END]), [T])]:
        assert run_v2(v2_kernels, prompt, budget, wants) == run(holder_cls, prompt, budget,
                                                                wants), (prompt, wants)
    assert run_v2(v2_kernels, prompt_of([]), budget, [T])[:budget + 1] == [T] * budget + [END]
    assert END not in run_v2(v2_kernels, prompt_of([]), budget, [T], marked=False)
