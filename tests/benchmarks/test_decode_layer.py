"""The decode-step benchmark's layer variants compute the same function: each part of the
plain-PyTorch bf16 layer, fed the state our layer had before that part, gives our part's
output within FP8 activation-quantization noise (CPU: tiny sizes, the torch MLA adapter and
the Triton kernels under the interpreter)."""

import sys
from pathlib import Path

import pytest
import torch

from ds_plugin.kernels.fp8_format import calc_diff

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import decode_layer as L  # noqa: E402

TINY = L.Dims(hidden=256, q_lora=128, experts=16, top_k=4, n_group=4, topk_group=2,
              moe_inter=256, heads=8)
OUTPUTS = {"attn_in": ("q",), "attn": ("o_lat",), "attn_out": ("h",), "router": ("x", "tw"),
           "experts": ("y",), "shared": ("h",)}
# The plain-PyTorch attention rounds its scores to bf16 before the softmax (as a bf16 bmm
# does), about 1% of each weight here; every other part differs by FP8 activation rounding.
BUDGET = {"attn": 1e-2}


@pytest.mark.parametrize("ep", [False, True], ids=["TP", "DP-attn+EP"])
def test_layer_variants_agree_part_by_part(ep):
    layout = L.Layout("tiny", ep=ep, dims=TINY, ranks=2)
    # A smooth softmax (small cached latents): a near-tie of the attention weights would
    # turn rounding differences into different outputs.
    st = L.build(layout, 3, 80, "bf16", "cpu", page=16, cache_std=0.05)
    ours, ref = L.OursLayer(st, "torch"), L.TorchBf16Layer(st)
    st.t["h"] = st.t["h_in"]
    for (name, mine), (_, theirs) in zip(ours.parts, ref.parts):
        before = dict(st.t)
        mine()
        got = {k: st.t[k].clone() for k in OUTPUTS[name]}
        st.t.clear()
        st.t.update(before)
        theirs()
        for k, v in got.items():
            assert v.shape == st.t[k].view(v.shape).shape, (name, k)
            diff = calc_diff(v.float(), st.t[k].view(v.shape).float())
            assert diff < BUDGET.get(name, 2e-3), (name, k, diff)
        st.t.update({k: v for k, v in got.items()})  # go on from ours
