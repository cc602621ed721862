"""Run by test_fp8_engine.py in a subprocess: serve a block-FP8 checkpoint with the real
vLLM engine (in-process engine core, so the model is reachable), generate, and compare
every call of our quant methods against the checkpoint's dequantized weights.

argv: checkpoint dir, output json path. Prints nothing the test relies on; writes json.
"""

import inspect
import json
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core here: apply_model sees the model
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402

from ds_plugin.kernels.fp8_format import calc_diff  # noqa: E402
from ds_plugin.testing.checkpoint import read_state_dict  # noqa: E402

# vLLM merges some checkpoint linears into one layer: layer suffix -> checkpoint parts.
MERGED = {"gate_up_proj": ["gate_proj", "up_proj"],
          "fused_qkv_a_proj": ["q_a_proj", "kv_a_proj_with_mqa"]}
CALLS_KEPT = 2  # per layer: enough to see prefill and decode shapes


def our_layers(model):
    from ds_plugin.quant.block_fp8 import DSBlockFp8LinearMethod
    from ds_plugin.quant.block_fp8_moe import DSBlockFp8MoEMethod

    for name, mod in model.named_modules():
        qm = getattr(mod, "quant_method", None)
        if isinstance(qm, (DSBlockFp8LinearMethod, DSBlockFp8MoEMethod)):
            yield name, mod, qm


def install_spies(model):
    """Record (inputs, output) of the first calls of every ds_fp8 apply()."""
    counts = {"linear": 0, "moe": 0, "other_linear": []}
    from ds_plugin._vllm.quant import LinearBase as linear_base
    for name, mod in model.named_modules():
        if isinstance(mod, linear_base) and not isinstance(
                getattr(mod, "quant_method", None), tuple(type(q) for _, _, q in our_layers(model))):
            counts["other_linear"].append(f"{name}:{type(mod.quant_method).__name__}")
    for name, mod, qm in our_layers(model):
        counts["moe" if hasattr(mod, "w13_weight") else "linear"] += 1
        orig = qm.apply
        sig = inspect.signature(orig)
        mod.ds_probe_calls = []

        def spy(*args, _orig=orig, _sig=sig, _mod=mod, **kwargs):
            out = _orig(*args, **kwargs)
            if len(_mod.ds_probe_calls) < CALLS_KEPT:
                bound = _sig.bind(*args, **kwargs).arguments
                keep = {k: v.detach().clone() for k, v in bound.items()
                        if isinstance(v, torch.Tensor)}
                _mod.ds_probe_calls.append((keep, out.detach().clone()))
            return out
        qm.apply = spy
    return counts


def linear_ref(ckpt, prefix):
    if f"{prefix}.weight" in ckpt:
        return ckpt[f"{prefix}.weight"]
    for suffix, parts in MERGED.items():
        if prefix.endswith("." + suffix):
            base = prefix[: -len(suffix)]
            return torch.cat([ckpt[f"{base}{p}.weight"] for p in parts])
    raise KeyError(f"no checkpoint tensor for layer {prefix}")


def moe_ref(ckpt, prefix, x, topk_weights, topk_ids):
    """fp32: sum_j w_j * down(silu(gate x) * up x) with the checkpoint's dequantized experts."""
    out = torch.zeros(x.shape, dtype=torch.float32)
    xf = x.float()
    for t in range(x.shape[0]):
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            g = ckpt[f"{prefix}.{e}.gate_proj.weight"] @ xf[t]
            u = ckpt[f"{prefix}.{e}.up_proj.weight"] @ xf[t]
            y = ckpt[f"{prefix}.{e}.down_proj.weight"] @ (torch.nn.functional.silu(g) * u)
            out[t] += float(topk_weights[t, j]) * y
    return out


def compare(model, ckpt):
    rows = []
    for name, mod, qm in our_layers(model):
        for args, out in mod.ds_probe_calls:
            if "topk_ids" in args:
                ref = moe_ref(ckpt, qm.prefix, args["x"], args["topk_weights"], args["topk_ids"])
                bound = None
            else:
                w = linear_ref(ckpt, qm.prefix)
                x = args["x"].float()
                ref = x @ w.t()
                # bf16 weights (<= 2**-9 relative each) + one bf16 rounding of the output
                bound = ((x.abs() @ w.abs().t()) * 2 ** -9 + ref.abs() * 2 ** -7)
            err = (out.float() - ref).abs()
            rows.append({"layer": qm.prefix, "kind": "moe" if bound is None else "linear",
                         "tokens": int(args["x"].shape[0]),
                         "max_err_over_bound": float((err / bound).max()) if bound is not None else None,
                         "rel_max_err": float(err.max() / ref.abs().max().clamp_min(1e-30)),
                         "calc_diff": calc_diff(out, ref), "finite": bool(out.float().isfinite().all())})
    return rows


def main():
    ckpt_dir, out_path = sys.argv[1], sys.argv[2]
    from tests.helpers.vllm_api import LLM, SamplingParams

    llm = LLM(model=ckpt_dir, enforce_eager=True, max_model_len=512, gpu_memory_utilization=0.3,
              seed=0)
    quant = llm.llm_engine.model_config.quantization
    counts = llm.apply_model(install_spies)[0]
    prompts = ["The capital of France is", "1 2 3 4 5 6 7"]
    gens = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6, logprobs=1))
    ckpt = read_state_dict(ckpt_dir, dequantize=True)
    rows = llm.apply_model(lambda m: compare(m, ckpt))[0]
    result = {"quantization": quant, "counts": counts, "rows": rows,
              "generated": [list(g.outputs[0].token_ids) for g in gens],
              "logprobs_finite": all(all(lp == lp and abs(lp) != float("inf")
                                         for step in g.outputs[0].logprobs for lp in
                                         (v.logprob for v in step.values()))
                                     for g in gens)}
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
