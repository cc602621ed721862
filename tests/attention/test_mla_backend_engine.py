"""ds-plugin's MLA backend inside the real vLLM engine (CPU): same greedy tokens as vLLM's own.

Two servers on one tiny peaked checkpoint, both with `--attention-backend CPU_MLA`: one with
DS_PLUGIN_CPU_MLA=1 (our backend: our metadata builder, our cache write and decode through the
torch adapter), one without (vLLM's CPU_MLA with its C++ decode). Ours also runs MTP with
two draft tokens, so its decode sees three query tokens per request (causal among them); greedy
speculative decoding is exact, so the tokens must still match the reference's plain decoding.
Prompts fill several 16-token pages and the completions cross page boundaries during decode.

The checkpoint is peaked (TinyConfig.logit_peak) so greedy decoding is not decided by bf16
near-ties; the comparison still stops at the first step whose top-2 logprob gap in the reference
is below 0.05 nats, where legitimately different summation orders may flip the choice.
"""

from __future__ import annotations

import json

import pytest

from ds_plugin.testing.checkpoint import TinyConfig, write_checkpoint
from ds_plugin.testing.server import CPU_DEFAULT_ARGS, VllmServer
from tests.attention.greedy import compare_until_near_tie, greedy

pytestmark = pytest.mark.engine

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17",
    "Hi",
]
MAX_TOKENS = 24
NEAR_TIE = 0.05


@pytest.fixture(scope="module")
def peaked_ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("mla") / "tiny-peaked",
                            TinyConfig(logit_peak=2.0))


def test_our_cpu_mla_backend_matches_vllm(peaked_ckpt, tmp_path):
    args = [*CPU_DEFAULT_ARGS, "--attention-backend", "CPU_MLA", "--max-num-seqs", "4"]
    # The drafter picks its own backend (AMX_MLA on AMX machines); pin it to the target's.
    mtp = {"method": "mtp", "num_speculative_tokens": 2, "attention_backend": "CPU_MLA"}
    with VllmServer(peaked_ckpt, args=[*args, "--speculative-config", json.dumps(mtp)],
                    env={"DS_PLUGIN_CPU_MLA": "1"}, log_path=tmp_path / "ours.log") as ours:
        got, _ = greedy(ours, PROMPTS, MAX_TOKENS)
        log = ours.log_text()
    # The engine really ran our classes, not vLLM's CPU_MLA under the same name, and MTP
    # verification reached our decode with 1 + 2 query tokens per request.
    assert "ds_plugin.attention.mla_backend" in log and "decode via torch" in log, log[-3000:]
    assert "3 query tokens per request" in log, log[-3000:]
    with VllmServer(peaked_ckpt, args=args, env={"DS_PLUGIN_CPU_MLA": "0"},
                    log_path=tmp_path / "ref.log") as ref:
        want, _ = greedy(ref, PROMPTS, MAX_TOKENS)
        assert "ds_plugin.attention.mla_backend" not in ref.log_text()
    compared = compare_until_near_tie(got, want, NEAR_TIE)
    # Most steps must be decisive, or the test would prove nothing.
    assert compared >= MAX_TOKENS * len(PROMPTS) // 2, (got, want)
