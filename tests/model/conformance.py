"""Comparison rules for vLLM-with-plugin logits against the fp32 transformers reference.

bf16 serving cannot match an fp32 model exactly, and a random tiny model has places where
the fp32 reference itself is decided by less than bf16 noise: two experts (or two expert
groups) scoring within a few bf16 ulps of each other, or two next tokens within a few
hundredths of a logit. Those places are found *in the reference* (never from the output
under test), excluded, and counted; everywhere else the tolerances below must hold.
"""

from __future__ import annotations

import subprocess
import sys
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ds_plugin.testing.server import child_env

RUNNER = Path(__file__).with_name("vllm_runner.py")

# Router: sigmoid scores lie in (0, 1), where a bf16 ulp is at most 2^-8 ≈ 0.0039. The bf16
# gate GEMM and bf16 hidden states move a score by about a quarter of that; a selection
# (group or top-k boundary) decided by less than one ulp is a coin flip in bf16.
ROUTE_TIE = 2 ** -8
# vLLM hands back bf16 logits: at |logit| in [8, 16) one bf16 ulp is 0.0625, so a top-2
# gap under 4 ulps of that (0.25) is a near-tie.
LOGIT_TIE = 0.25
COSINE_MIN = 0.9999
# Log-prob of the actual next token, bf16 serving vs fp32 reference, in nats: the bf16
# rounding of that logit and of the log-sum-exp's dominant logit (half an ulp each of the
# row's largest |logit|), plus 1 ulp for the bf16 network beneath, plus 0.01 nats.
LOGPROB_ULPS = 2.0
LOGPROB_FLOOR = 0.01


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """Spacing of bf16 numbers at |x| (8 significant bits)."""
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp(min=2 ** -126))) - 7)


def run_vllm(request: dict, workdir: Path, env: dict | None = None, timeout: int = 900) -> dict:
    """One engine start in a subprocess (see vllm_runner.py); returns its saved results."""
    
    name = request.get("tag", "run")
    req_path, out_path = workdir / f"{name}.json", workdir / f"{name}.pt"
    req_path.write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, str(RUNNER), str(req_path), str(out_path)],
                          env=child_env(env), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"vLLM run {name} failed (rc={proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return torch.load(out_path)


class RoutingMargins:
    """Records, per token, the smallest routing decision margin over the reference's MoE
    layers (group boundary and top-k boundary, biased scores, fp32)."""

    def __init__(self, model) -> None:
        self.per_layer: list[torch.Tensor] = []
        self.handles = [layer.mlp.gate.register_forward_hook(self._hook)
                        for layer in model.model.layers if hasattr(layer.mlp, "gate")]

    def _hook(self, gate, inputs, _out) -> None:
        h = inputs[0].reshape(-1, gate.hidden_dim).float()
        s = torch.sigmoid(h @ gate.weight.float().T) + gate.e_score_correction_bias.float()
        n_exp, n_grp = s.shape[1], gate.num_group
        group = s.view(-1, n_grp, n_exp // n_grp).topk(2, dim=-1).values.sum(-1)
        margin = torch.full((s.shape[0],), float("inf"))
        if gate.topk_group < n_grp:
            g = group.sort(-1, descending=True).values
            margin = g[:, gate.topk_group - 1] - g[:, gate.topk_group]
        chosen = group.topk(gate.topk_group, dim=-1).indices
        allowed = torch.zeros_like(group).scatter_(1, chosen, 1).bool()
        masked = s.masked_fill(~allowed.repeat_interleave(n_exp // n_grp, 1), float("-inf"))
        top = masked.sort(-1, descending=True).values
        if gate.top_k < top.shape[1]:
            margin = torch.minimum(margin, top[:, gate.top_k - 1] - top[:, gate.top_k])
        self.per_layer.append(margin.nan_to_num(float("inf")))

    def reset(self) -> None:
        self.per_layer = []

    def well_routed(self) -> torch.Tensor:
        """Per position: True unless some layer's routing at it, or (through attention) an
        earlier position's routing in a layer that has layers after it, is a near-tie."""
        ties = [m < ROUTE_TIE for m in self.per_layer]
        bad = ties[-1].clone()
        for t in ties[:-1]:
            bad |= t.cumsum(0) > 0
        return ~bad


@dataclass
class LogitReport:
    positions: int = 0
    compared: int = 0
    min_cosine: float = 1.0
    max_logprob_err: float = 0.0
    max_logprob_budget: float = 0.0
    top1_compared: int = 0
    failures: list[str] = field(default_factory=list)


def compare_logits(got: torch.Tensor, ref: torch.Tensor, ids: list[int], ok: torch.Tensor,
                   report: LogitReport, tag: str) -> None:
    """got/ref: [T, V] logits (row i = after token i); ok: [T] positions to hold to account."""
    if torch.isnan(got).any():
        report.failures.append(f"{tag}: vLLM returned NaN or incomplete logits")
        return
    # Cosine of the centred logits: softmax ignores a per-row constant, and vLLM's
    # logprob-style outputs would differ from raw logits by exactly such a constant.
    a, b = got - got.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    nxt = torch.tensor(ids[1:])[:, None]
    lp_err = (got.log_softmax(-1)[:-1].gather(1, nxt)
              - ref.log_softmax(-1)[:-1].gather(1, nxt)).abs()[:, 0]
    budget = LOGPROB_ULPS * bf16_ulp(ref.abs().amax(-1))[:-1] + LOGPROB_FLOOR
    top2 = ref.topk(2, dim=-1).values
    clear = ok & (top2[:, 0] - top2[:, 1] > LOGIT_TIE)
    report.positions += len(ids)
    report.compared += int(ok.sum())
    report.top1_compared += int(clear.sum())
    if ok.any():
        report.min_cosine = min(report.min_cosine, float(cos[ok].min()))
    if ok[:-1].any():
        report.max_logprob_err = max(report.max_logprob_err, float(lp_err[ok[:-1]].max()))
    for i in torch.nonzero(ok & (cos < COSINE_MIN)).flatten().tolist():
        report.failures.append(f"{tag} pos {i}: cosine {float(cos[i]):.6f} < {COSINE_MIN}")
    report.max_logprob_budget = max(report.max_logprob_budget, float(budget.max()))
    for i in torch.nonzero(ok[:-1] & (lp_err > budget)).flatten().tolist():
        report.failures.append(f"{tag} pos {i}: next-token log-prob error "
                               f"{float(lp_err[i]):.4f} > budget {float(budget[i]):.4f}")
    wrong = clear & (got.argmax(-1) != ref.argmax(-1))
    for i in torch.nonzero(wrong).flatten().tolist():
        report.failures.append(f"{tag} pos {i}: top-1 {int(got[i].argmax())} != reference "
                               f"{int(ref[i].argmax())} (reference margin "
                               f"{float(top2[i, 0] - top2[i, 1]):.3f})")


@torch.no_grad()
def reference_greedy(model, ids: list[int], steps: int) -> tuple[list[int], int]:
    """fp32 greedy continuation and how many leading steps are decided beyond bf16 noise
    (top-2 logit gap > LOGIT_TIE). Routing near-ties are not counted here: the peaked
    checkpoints' top-2 gaps (~10 logits) are far beyond what one flipped expert moves."""
    seq, tokens, decided = list(ids), [], None
    for step in range(steps):
        top2 = model(torch.tensor([seq])).logits[0, -1].float().topk(2)
        tokens.append(int(top2.indices[0]))
        if decided is None and float(top2.values[0] - top2.values[1]) <= LOGIT_TIE:
            decided = step
        seq.append(tokens[-1])
    return tokens, steps if decided is None else decided


def assert_serves_as_reference(served: dict, model, margins: RoutingMargins,
                               prompts: list[list[int]], steps: int, tag: str) -> None:
    """A served run (run_vllm with prompt logits) against the fp32 reference `model`: prompt
    logits within the tolerances above at every well-routed position (at least half of
    them), and greedy tokens equal to the reference's over every step it decides beyond a
    near-tie (at least half of all steps). Every failure is reported, not only the first."""
    report = LogitReport()
    for i, (ids, got) in enumerate(zip(prompts, served["prompt_logits"])):
        margins.reset()
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].float()
        compare_logits(got, ref, ids, margins.well_routed(), report, f"prompt {i}")
    print(f"{tag}: {report.compared}/{report.positions} positions, cosine >= "
          f"{report.min_cosine:.6f}, log-prob error <= {report.max_logprob_err:.4f}")
    assert report.compared >= report.positions // 2, "too few well-routed positions to judge"
    covered, failures = 0, list(report.failures)
    for i, (ids, got) in enumerate(zip(prompts, served["tokens"])):
        want, decided = reference_greedy(model, ids, steps)
        covered += decided
        if got[:decided] != want[:decided]:
            step = next(s for s in range(decided) if got[s] != want[s])
            failures.append(f"prompt {i}: greedy step {step} token {got[step]} != reference "
                            f"{want[step]} (steps 0..{decided - 1} are decided in fp32)")
    # Peaked logits (logit_peak=2): most greedy steps are decided beyond bf16 noise.
    assert covered >= steps * len(prompts) // 2, f"only {covered} decided greedy steps"
    assert not failures, "\n".join(failures)
