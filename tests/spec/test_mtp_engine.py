"""ds_plugin's MTP draft (ds_plugin.spec.mtp) in the real vLLM engine (CPU), compiled as served.

All runs serve the trained tiny checkpoint (ds_plugin.testing.train_tiny: its MTP layer has
learnt what the model says next, so drafts are accepted and the verify path that keeps
accepted tokens is exercised, not only the bonus-token path of a random draft). The engines
run one after another in one child process (tests/spec/mtp_runner.py), one start per row;
every comparison reads these runs. k covers 1..3 on both checkpoints and each checkpoint
runs on one and two tensor-parallel ranks (pairwise, not the full product, for CI time):

    bf16  TP1  off | k=1 | k=3 (proposals recorded)
    fp8   TP1  off | k=2                                TP2  off | k=1
    bf16  TP1  k=3 vLLM's in-tree draft (proposals recorded; last, it overrides the registry)

Each run with MTP is compared with the run without it on the same checkpoint and the same
number of ranks: TP=2 sums partials in another order than TP=1, so a TP=1 reference decides
different near-ties (seen: fp8 TP2 k=1 against fp8 TP1 parted at step 19).

Greedy speculative decoding is exact, so every run with MTP must produce the tokens of the
run without it, up to the first step the latter decides by a near-tie (its top-2 log-prob
gap below NEAR_TIE: verification batches several tokens, a different summation order).
Our draft and vLLM's are the same math on the same target, so they propose the same tokens
wherever neither decides by a near-tie, and their acceptance counters agree.
"""

from __future__ import annotations

import pytest

from ds_plugin.testing import train_tiny
from tests.spec import common as P

pytestmark = pytest.mark.engine

OURS_DRAFT = "ds_plugin.spec.mtp.DeepSeekMTP"
IN_TREE_DRAFT = "vllm.model_executor.models.deepseek_mtp.DeepSeekMTP"
OURS_TARGET = "ds_plugin.model.deepseek_v3.DeepseekV3ForCausalLM"
NEAR_TIE = 0.25        # nats between the top two log-probs of the run without MTP
MARGIN_TIE = 0.25      # logits between a draft's top two (draft proposals)
MAX_TOKENS = 48
# Mean accepted length (1 + accepted / drafts, vLLM's definition) on these prompts, measured
# 2026-12-02 (2-core AVX-512 box, the converged checkpoint): k=1 1.95, k=2 2.85 (fp8), k=3
# 3.72, ours and in-tree alike (SGLang's CI asks > 2.8 at 3 steps on the real model). The
# floors sit ~10% under, for another CPU's training run and its own text on the two unknown
# prompts; a draft with a wrong hidden state, norm, position or layer choice accepts ~nothing.
FLOOR = {1: 1.75, 2: 2.55, 3: 3.3}

RUNS = {  # name: (quant, tp, k, draft), in run order
    "bf16-off": ("bf16", 1, 0, None),
    "bf16-k1": ("bf16", 1, 1, "ours"),
    "bf16-k3": ("bf16", 1, 3, "ours"),
    "fp8-off": ("fp8", 1, 0, None),
    "fp8-k2": ("fp8", 1, 2, "ours"),
    "fp8-tp2-off": ("fp8", 2, 0, None),
    "fp8-tp2-k1": ("fp8", 2, 1, "ours"),
    "bf16-k3-in-tree": ("bf16", 1, 3, "in_tree"),
}
SPEC_RUNS = [name for name, (_, _, k, _) in RUNS.items() if k]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("mtp")


@pytest.fixture(scope="module")
def prompts():
    return P.token_prompts()


def _request(name: str, prompts) -> dict:
    quant, tp, k, draft = RUNS[name]
    engine: dict = {}
    if k:
        engine["speculative_config"] = {"method": "mtp", "num_speculative_tokens": k}
    if draft == "in_tree":
        # Our target, vLLM's draft class: vLLM applies model_class_overrides to its registry.
        engine["model_class_overrides"] = {"DeepSeekMTPModel": IN_TREE_DRAFT.replace(
            ".DeepSeekMTP", ":DeepSeekMTP")}
    return {"tag": name, "model": str(train_tiny.trained_checkpoint(quant)),
            "prompts": prompts, "max_tokens": MAX_TOKENS, "tp": tp, "engine": engine,
            "env": {"VLLM_CPU_OMP_THREADS_BIND": "0|1"} if tp > 1 else {},
            "record": name.startswith("bf16-k3"), "logprobs": not k, "ignore_eos": False}


@pytest.fixture(scope="module")
def runs(workdir, prompts):
    return P.run([_request(name, prompts) for name in RUNS], workdir)


@pytest.fixture(scope="module")
def served(runs):
    return runs.__getitem__


def _decided(off: dict, i: int) -> int:
    """Steps of prompt i that the run without MTP decides by more than NEAR_TIE."""
    gaps = off["gaps"][i]
    return next((s for s, g in enumerate(gaps) if g < NEAR_TIE), len(gaps))


def test_engine_builds_our_draft_on_our_target(served):
    for name in ("bf16-k1", "fp8-k2", "fp8-tp2-k1"):
        classes = served(name)["classes"]
        assert classes == [{"target": OURS_TARGET, "draft": OURS_DRAFT}] * RUNS[name][1], name
    assert served("bf16-k3-in-tree")["classes"] == [{"target": OURS_TARGET,
                                                      "draft": IN_TREE_DRAFT}]


@pytest.mark.parametrize("name", SPEC_RUNS)
def test_greedy_with_mtp_equals_without(name, served, record_property):
    quant, tp = RUNS[name][:2]
    off, on = served(f"{quant}-tp2-off" if tp > 1 else f"{quant}-off"), served(name)
    compared = 0
    for i, (want, got) in enumerate(zip(off["tokens"], on["tokens"])):
        n = _decided(off, i)
        assert got[:n] == want[:n], (f"{name}, prompt {i}: first difference at step "
                                     f"{next(s for s in range(n) if got[s] != want[s])}")
        compared += n
    total = sum(len(t) for t in off["tokens"])
    record_property("steps_compared", compared)
    print(f"{name}: {compared}/{total} greedy steps identical with MTP on and off")
    # Measured 229 of 229 on the converged checkpoint (150 of 278 on the earlier, underfit
    # one, whose repetitions were decided by near-ties).
    assert compared >= 0.5 * total, "too many near-ties to judge"
    spec = on["spec"]
    assert spec["num_drafts"] > 0 and spec["num_draft_tokens"] > 0


def test_proposals_equal_vllm_in_tree_draft(served, record_property):
    ours, theirs = served("bf16-k3")["records"], served("bf16-k3-in-tree")["records"]
    mine, peer = P.proposals(ours), P.proposals(theirs)
    common = sorted(set(mine) & set(peer))
    compared = mismatched = 0
    for key in common:
        (a, ma), (b, mb) = mine[key], peer[key]
        for s in range(len(a)):
            if min(ma[s], mb[s]) < MARGIN_TIE:
                break
            compared += 1
            mismatched += a[s] != b[s]
    record_property("draft_tokens_compared", compared)
    print(f"proposals: {len(common)} contexts in both runs, {compared} draft tokens compared, "
          f"{mismatched} differ")
    assert len(common) >= 0.9 * max(len(mine), len(peer))
    assert compared >= 0.8 * sum(len(mine[k][0]) for k in common)
    assert mismatched == 0


def test_acceptance_equals_in_tree_and_meets_floor(served, record_property):
    figures = {}
    for name in ("bf16-k1", "fp8-k2", "bf16-k3", "bf16-k3-in-tree"):
        figures[name] = P.acceptance(served(name)["spec"])
    record_property("acceptance", figures)
    for name, f in figures.items():
        print(f"{name}: acceptance rate {f['rate']:.3f}, mean accepted length "
              f"{f['mean_len']:.3f}, per position {f['per_pos']}")
    for name in SPEC_RUNS:  # CPU decode speed, relative only (benchmarks/bench_mtp.py)
        quant, tp = RUNS[name][:2]
        off = served(f"{quant}-tp2-off" if tp > 1 else f"{quant}-off")
        rate = lambda r: sum(map(len, r["tokens"])) / r["decode_s"]  # noqa: E731
        print(f"{name}: {rate(served(name)):.1f} tok/s, {rate(served(name)) / rate(off):.2f}x "
              f"of no MTP ({rate(off):.1f} tok/s; {len(off['tokens'])} prompts at once)")
    ours, theirs = figures["bf16-k3"], figures["bf16-k3-in-tree"]
    assert abs(ours["mean_len"] - theirs["mean_len"]) <= 0.05 * theirs["mean_len"]
    for k, name in ((1, "bf16-k1"), (2, "fp8-k2"), (3, "bf16-k3")):
        assert figures[name]["mean_len"] >= FLOOR[k], (name, figures[name])
