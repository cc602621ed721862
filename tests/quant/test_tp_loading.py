"""tests/helpers/tp_shard.py against vLLM's own loaders: what rank r of tp really loads.

Each case builds the real vLLM layer our quant method serves (ds_fp8's linear method on
ColumnParallelLinear / MergedColumnParallelLinear / RowParallelLinear, ds_fp8's and
W4AFP8's MoE methods on FusedMoE's routed experts) as rank r of tp, in this one process
(vllm_probe.as_tp_rank answers vLLM's rank and size queries; nothing is communicated while
layers are built and loaded), feeds every parameter's weight_loader the full checkpoint
tensor and compares what landed with tp_shard's slice of it, bitwise, weights and scales.
The parameters come NaN-poisoned (scales) or uninitialised (weights), so equality also
proves every element was written. Sizes are small, with the per-rank block structure of
DeepSeek-V3 (at TP 8 each rank keeps at least one 128-block) plus partial K blocks where
the method allows them; per-rank sizes that split a 128-block are refused at build.
"""

import itertools

import pytest
import torch

pytest.importorskip("vllm")

from ds_plugin._vllm.layers import (ColumnParallelLinear, FusedMoEFactory,  # noqa: E402
                                    MergedColumnParallelLinear, RowParallelLinear)
from ds_plugin.kernels.ref_fp8 import random_fp8_weight  # noqa: E402
from ds_plugin.kernels.ref_w4a8 import random_int4_weight  # noqa: E402
from ds_plugin.quant.block_fp8 import DSBlockFp8Config, DSBlockFp8LinearMethod  # noqa: E402
from ds_plugin.quant.block_fp8_moe import DSBlockFp8MoEMethod  # noqa: E402
from ds_plugin.quant.w4afp8 import DSW4AFp8Config  # noqa: E402
from ds_plugin.quant.w4afp8_moe import DSW4AFp8MoEMethod  # noqa: E402
from tests.helpers import tp_shard  # noqa: E402
from tests.helpers.vllm_probe import as_tp_rank, single_rank_context  # noqa: E402

TPS = (2, 4, 8)
FP8_CFG = {"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}
W4_CFG = {"quant_method": "w4afp8", "activation_scheme": "static", "fmt": "e4m3"}
_UNIQUE = itertools.count()  # vLLM refuses two layers of one name in a config


@pytest.fixture(scope="module", autouse=True)
def ctx():
    with single_rank_context():
        yield


def _prefix(name):
    return f"tp{next(_UNIQUE)}.model.layers.1.{name}"


def _bits(t):
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def _assert_same(tag, got, want):
    assert got.shape == want.shape, f"{tag}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{tag}: dtype {got.dtype} vs {want.dtype}"
    assert torch.equal(_bits(got), _bits(want)), (
        f"{tag}: {int((_bits(got) != _bits(want)).sum())} of {got.numel()} elements differ")


def _built(layer, tp, r, tag):
    # A vLLM that read the rank somewhere as_tp_rank does not answer would build TP=1.
    got = (layer.tp_size, layer.tp_rank)
    assert got == (tp, r), f"{tag}: built as rank {got[1]} of {got[0]}"
    assert isinstance(layer.quant_method, DSBlockFp8LinearMethod), type(layer.quant_method)
    return layer


def _load(param, tensor, *shard):
    param.weight_loader(param, tensor, *shard)


# name -> (vLLM class, output sizes (one per checkpoint tensor), K). DeepSeek-V3's roles:
# q_b_proj / kv_b_proj column-parallel, gate_up merged, o_proj / down_proj row-parallel.
LINEARS = {
    "self_attn.q_b_proj": ("column", [3072], 256),
    "self_attn.kv_b_proj": ("column", [2048], 200),  # a partial K block, not split by TP
    "mlp.gate_up_proj": ("merged", [1024, 1024], 384),
    "mlp.down_proj": ("row", [256], 3072),
    "self_attn.o_proj": ("row", [320], 2048),  # a partial N block, not split by TP
}


def _build_linear(kind, outs, k, prefix):
    cfg = DSBlockFp8Config.from_config(FP8_CFG)
    common = dict(bias=False, quant_config=cfg, prefix=prefix, params_dtype=torch.bfloat16)
    if kind == "column":
        return ColumnParallelLinear(k, outs[0], **common)
    if kind == "merged":
        return MergedColumnParallelLinear(k, outs, **common)
    return RowParallelLinear(k, outs[0], **common)


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("name", list(LINEARS))
def test_linear_ranks_load_tp_shard_slices(name, tp):
    kind, outs, k = LINEARS[name]
    g = torch.Generator().manual_seed(len(name) + tp)
    parts = [random_fp8_weight((n, k), "cpu", generator=g) for n in outs]
    for r in range(tp):
        tag = f"{name} TP={tp} rank {r}"
        with as_tp_rank(tp, r):
            layer = _built(_build_linear(kind, outs, k, _prefix(name)), tp, r, tag)
        for i, (w, s) in enumerate(parts):
            shard = (i,) if kind == "merged" else ()
            _load(layer.weight, w, *shard)
            _load(layer.weight_scale_inv, s, *shard)
        if kind == "merged":
            want = tp_shard.merged(parts, tp, r)
        else:
            want = getattr(tp_shard, kind)(*parts[0], tp, r)
        _assert_same(f"{tag} weight", layer.weight.data, want[0])
        _assert_same(f"{tag} weight_scale_inv", layer.weight_scale_inv.data, want[1])
        layer.quant_method.process_weights_after_loading(layer)  # the method accepts it


# (kind, output sizes, K, tp, refused): per-rank sizes that split a 128-block. vLLM's v1
# loaders shard a block scale by ceil(per-rank size / 128) from r * that: once a rank starts
# inside a block that is another rank's scale row (accepted silently) or past the end, and
# one of the rank's fp8 blocks would need two checkpoint scales. The method refuses the
# layer when it is built.
SPLIT_BLOCKS = [
    ("column", [768], 256, 4, True),  # 192 rows per rank
    ("merged", [1024, 1024], 256, 16, True),  # 64 rows of each part per rank
    ("row", [256], 2304, 2, False),  # 1152 columns per rank: whole blocks (control)
    ("row", [256], 1536, 8, True),  # 192 columns per rank
]


@pytest.mark.parametrize("kind, outs, k, tp, refused", SPLIT_BLOCKS)
def test_linear_rank_splitting_a_block_is_refused_at_build(kind, outs, k, tp, refused):
    for r in (0, tp - 1):
        prefix = _prefix(f"{kind}_proj")
        with as_tp_rank(tp, r):
            if not refused:
                _built(_build_linear(kind, outs, k, prefix), tp, r, prefix)
                continue
            with pytest.raises(ValueError, match=rf"{prefix}: TP {tp} gives each rank .*128"):
                _build_linear(kind, outs, k, prefix)


# (hidden, intermediate, experts): at TP 8 each rank keeps one 128-wide intermediate block.
MOE = (256, 1024, 4)
_PROJ = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


def _experts(cfg, tp, r, inter=MOE[1], experts=MOE[2]):
    if isinstance(cfg, DSW4AFp8Config):
        cfg.num_hidden_layers = 61  # layer 1 is a decoder layer, not the MTP one
    moe = FusedMoEFactory(num_experts=experts, top_k=2, hidden_size=MOE[0],
                          intermediate_size=inter, renormalize=True, quant_config=cfg,
                          params_dtype=torch.bfloat16, prefix=_prefix("mlp.experts"))
    layer = moe.routed_experts
    mc = layer.moe_config.moe_parallel_config
    assert (mc.tp_size, mc.tp_rank, mc.use_ep) == (tp, r, False), mc
    return layer


def _load_experts(layer, stacks):
    """stacks: shard id -> (weight (E, N, K'), scales (E, N', K'')) as the checkpoint has them
    per expert; every expert's tensor goes through the parameter's own loader."""
    for sid, (w, s) in stacks.items():
        stem = "w2" if sid == "w2" else "w13"
        for kind, t in (("weight", w), ("weight_scale_inv", s)):
            param = getattr(layer, f"{stem}_{kind}")
            for e in range(t.shape[0]):
                assert param.weight_loader(param, t[e], f"experts.{e}.{_PROJ[sid]}.{kind}",
                                           shard_id=sid, expert_id=e, return_success=True)


def _check_experts(tag, layer, stacks, tp, r):
    (w1, s1), (w3, s3), (w2, s2) = stacks["w1"], stacks["w3"], stacks["w2"]
    for got, want in (("w13_weight", tp_shard.experts_w13(torch.cat([w1, w3], 1), tp, r)),
                      ("w13_weight_scale_inv", tp_shard.experts_w13(torch.cat([s1, s3], 1), tp, r)),
                      ("w2_weight", tp_shard.experts_w2(w2, tp, r)),
                      ("w2_weight_scale_inv", tp_shard.experts_w2(s2, tp, r))):
        _assert_same(f"{tag} {got}", getattr(layer, got).data, want)


def _fp8_stacks(g):
    h, i, e = MOE
    return {"w1": random_fp8_weight((e, i, h), "cpu", generator=g),
            "w3": random_fp8_weight((e, i, h), "cpu", generator=g),
            "w2": random_fp8_weight((e, h, i), "cpu", generator=g)}


def _int4_stacks(g):
    h, i, e = MOE
    return {"w1": random_int4_weight((e, i, h), "cpu", generator=g),
            "w3": random_int4_weight((e, i, h), "cpu", generator=g),
            "w2": random_int4_weight((e, h, i), "cpu", generator=g)}


@pytest.mark.parametrize("tp", TPS)
def test_fp8_experts_ranks_load_tp_shard_slices(tp):
    stacks = _fp8_stacks(torch.Generator().manual_seed(tp))
    for r in range(tp):
        with as_tp_rank(tp, r):
            layer = _experts(DSBlockFp8Config.from_config(FP8_CFG), tp, r)
        assert isinstance(layer.quant_method, DSBlockFp8MoEMethod), type(layer.quant_method)
        _load_experts(layer, stacks)
        _check_experts(f"fp8 experts TP={tp} rank {r}", layer, stacks, tp, r)
        layer.quant_method.process_weights_after_loading(layer)


@pytest.mark.parametrize("tp", TPS)
def test_w4afp8_experts_ranks_load_tp_shard_slices(tp):
    stacks = _int4_stacks(torch.Generator().manual_seed(10 + tp))
    e = MOE[2]
    a13 = torch.rand(e, 2, generator=torch.Generator().manual_seed(tp)) + 0.1
    for r in range(tp):
        with as_tp_rank(tp, r):
            layer = _experts(DSW4AFp8Config.from_config(W4_CFG), tp, r)
        assert isinstance(layer.quant_method, DSW4AFp8MoEMethod), type(layer.quant_method)
        _load_experts(layer, stacks)
        _check_experts(f"W4AFP8 experts TP={tp} rank {r}", layer, stacks, tp, r)
        # Static input scales: every rank keeps all experts' (its max must be TP=1's).
        for x in range(e):
            for col, sid in enumerate(("w1", "w3")):
                p = layer.w13_input_scale
                p.weight_loader(p, a13[x, col], f"experts.{x}.{_PROJ[sid]}.input_scale",
                                shard_id=sid, expert_id=x, return_success=True)
            p = layer.w2_input_scale
            p.weight_loader(p, a13[x, 0] * 2, f"experts.{x}.down_proj.input_scale",
                            shard_id="w2", expert_id=x, return_success=True)
        _assert_same(f"TP={tp} rank {r} w13_input_scale", layer.w13_input_scale.data, a13)
        layer.quant_method.process_weights_after_loading(layer)
        assert layer.w13_input_scale.item() == a13.max().item()
        assert layer.w2_input_scale.item() == (a13[:, 0] * 2).max().item()


def test_experts_rank_splitting_a_group_is_refused_at_build():
    # TP 32 on DeepSeek's 2048-wide experts: 64 intermediate values per rank, half a 128-wide
    # int4 group of w2's packed K (and half an fp8 block): both methods refuse the layer.
    for make, match in ((lambda: DSW4AFp8Config.from_config(W4_CFG),
                         r"intermediate size per TP rank \(2048 / 32\).*\[1, 2, 4, 8, 16\]"),
                        (lambda: DSBlockFp8Config.from_config(FP8_CFG),
                         r"intermediate size per partition 64 is not a multiple of 128")):
        for r in (0, 31):
            with as_tp_rank(32, r), pytest.raises(ValueError, match=match):
                _experts(make(), 32, r, inter=2048, experts=2)
