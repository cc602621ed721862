"""CPU routed experts: each token runs through its top-k experts only, and the result is the
DeepSeekMoE sum (routing weights x expert FFNs), checked against an fp32 dense restatement."""

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ds_plugin.moe.experts import cpu_grouped_experts, grouped_experts, local_ids, local_routing


def _problem(m=37, e=8, k=3, h=64, i=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, h, generator=g).to(torch.bfloat16)
    w13 = (torch.randn(e, 2 * i, h, generator=g) / h ** 0.5).to(torch.bfloat16)
    w2 = (torch.randn(e, h, i, generator=g) / i ** 0.5).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(m)] or
                      [torch.zeros(0, k, dtype=torch.int64)]).to(torch.int32).view(m, k)
    weights = torch.rand(m, k, generator=g)
    return x, weights, ids, w13, w2


def _dense_fp32(x, weights, ids, w13, w2):
    """(out, bound): the fp32 sum, and the rounding bound of a bf16 evaluation of it."""
    i = w2.shape[2]
    out = torch.zeros(x.shape[0], x.shape[1])
    mag = torch.zeros_like(out)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gu = x[t].float() @ w13[e].float().t()
            act = F.silu(gu[:i]) * gu[i:]
            out[t] += weights[t, j] * (act @ w2[e].float().t())
            mag[t] += weights[t, j] * (act.abs() @ w2[e].float().abs().t())
    # gate/up and silu*up each round to bf16 (2**-9 relative, amplified by silu's slope
    # <= 1.1), so the down product moves by <= ~4 * 2**-9 of sum |act||w2|; then the
    # output rounds once more.
    return out, 4 * 2 ** -9 * mag + 2 ** -8 * out.abs()


class _CountRows(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.rows = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            self.rows += args[-2].shape[0]
        return func(*args, **(kwargs or {}))


def _assert_bf16_close(got, ref_and_bound):
    ref, bound = ref_and_bound
    assert got.dtype == torch.bfloat16
    err = (got.float() - ref).abs()
    assert (err <= bound).all(), (err - bound).max()


def test_matches_fp32_reference_within_bf16_rounding():
    x, weights, ids, w13, w2 = _problem()
    _assert_bf16_close(cpu_grouped_experts(x, weights, ids, w13, w2),
                       _dense_fp32(x, weights, ids, w13, w2))


def test_runs_only_the_routed_experts():
    x, weights, ids, w13, w2 = _problem(m=40, e=16, k=2)
    with _CountRows() as count:
        grouped_experts(x, weights, ids, w13, w2)
    # Two GEMMs per routed (token, expert) pair: 2 * M * k rows, not 2 * M * E.
    assert count.rows == 2 * 40 * 2


def test_expert_parallel_map_zeroes_other_ranks_experts():
    x, weights, ids, w13, w2 = _problem(e=8)
    # This rank holds global experts 4..7 as local 0..3.
    expert_map = torch.tensor([-1, -1, -1, -1, 0, 1, 2, 3], dtype=torch.int32)
    mine = torch.where(ids >= 4, weights, torch.zeros_like(weights))
    ref = _dense_fp32(x, mine, ids, w13, w2)
    with _CountRows() as count:
        got = grouped_experts(x, weights, local_ids(ids, expert_map), w13[4:], w2[4:])
    _assert_bf16_close(got, ref)
    assert count.rows == 2 * int((ids >= 4).sum())  # other ranks' pairs are skipped
    # The fused-kernel form: every pair valid, other ranks' weights zero.
    w_loc, ids_loc = local_routing(weights, ids, expert_map)
    assert (ids_loc >= 0).all() and torch.equal(w_loc, mine)
    _assert_bf16_close(cpu_grouped_experts(x, w_loc, ids_loc, w13[4:], w2[4:]), ref)


def test_empty_batch():
    x, weights, ids, w13, w2 = _problem(m=0)
    assert cpu_grouped_experts(x, weights, ids, w13, w2).shape == (0, 64)
