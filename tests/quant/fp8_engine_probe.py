"""Run by test_fp8_engine.py in a subprocess: serve a block-FP8 checkpoint with the real
vLLM engine in its default (compiled) mode, generate, and check every ds_fp8 layer the
engine loaded against the checkpoint's dequantized weights.

Compiled, the model's forward no longer calls our Python apply() (Inductor runs what it
traced), so the layers are checked by calling apply() on them with inputs of prefill and
decode sizes, from inside the engine (LLM.apply_model); the tokens come from the compiled
graph. argv: checkpoint dir, output json path. Writes json.
"""

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
TOKENS = (7, 1)  # a prefill and a decode step
IDENTICAL = 10  # identical greedy requests in one batch


def our_layers(model):
    from ds_plugin.quant.block_fp8 import DSBlockFp8LinearMethod
    from ds_plugin.quant.block_fp8_moe import DSBlockFp8MoEMethod

    for name, mod in model.named_modules():
        qm = getattr(mod, "quant_method", None)
        if isinstance(qm, (DSBlockFp8LinearMethod, DSBlockFp8MoEMethod)):
            yield name, mod, qm


def count_layers(model):
    counts = {"linear": 0, "moe": 0, "other_linear": []}
    from ds_plugin._vllm.quant import LinearBase

    ours = {name for name, _, _ in our_layers(model)}
    for name, mod in model.named_modules():
        if isinstance(mod, LinearBase) and name not in ours:
            counts["other_linear"].append(f"{name}:{type(mod.quant_method).__name__}")
    for _, mod, _ in our_layers(model):
        counts["moe" if hasattr(mod, "w13_weight") else "linear"] += 1
    return counts


def layer_calls(mod, qm, gen, top_k):
    """(inputs, output) of apply() at each size in TOKENS, inputs in the model dtype."""
    dtype = mod.orig_dtype
    calls = []
    for m in TOKENS:
        if hasattr(mod, "w13_weight"):
            e, _, h = mod.w13_weight.shape
            args = {"x": torch.randn(m, h, generator=gen).to(dtype),
                    "topk_weights": torch.rand(m, top_k, generator=gen),
                    "topk_ids": torch.stack([torch.randperm(e, generator=gen)[:top_k]
                                             for _ in range(m)]).to(torch.int32)}
        else:
            args = {"x": torch.randn(m, mod.weight.shape[1], generator=gen).to(dtype)}
        calls.append((args, qm.apply(mod, **args)))
    return calls


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


def compare(model, ckpt, top_k):
    rows = []
    gen = torch.Generator().manual_seed(0)
    for name, mod, qm in our_layers(model):
        for args, out in layer_calls(mod, qm, gen, top_k):
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


def finite(gen) -> bool:
    return all(lp == lp and abs(lp) != float("inf")
               for step in gen.outputs[0].logprobs for lp in (v.logprob for v in step.values()))


def main():
    ckpt_dir, out_path = sys.argv[1], sys.argv[2]
    from tests.helpers.onednn_gemm import install
    from tests.helpers.vllm_api import LLM, SamplingParams

    gemm = install()  # the router GEMM as AVX-512 CPUs run it (issue 10), on any CPU

    # vLLM's default mode (torch.compile), as `vllm serve` runs it.
    llm = LLM(model=ckpt_dir, max_model_len=512, gpu_memory_utilization=0.3, seed=0)
    quant = llm.llm_engine.model_config.quantization
    counts = llm.apply_model(count_layers)[0]
    prompts = ["The capital of France is"] * IDENTICAL + ["1 2 3 4 5 6 7"]
    gens = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16, logprobs=1))
    ckpt = read_state_dict(ckpt_dir, dequantize=True)
    top_k = llm.llm_engine.model_config.hf_config.num_experts_per_tok
    rows = llm.apply_model(lambda m: compare(m, ckpt, top_k))[0]
    tokens = [list(g.outputs[0].token_ids) for g in gens]
    result = {"quantization": quant, "counts": counts, "rows": rows, "unquantized_gemm": gemm,
              "compiled": not llm.llm_engine.model_config.enforce_eager,
              "generated": tokens, "identical": len({tuple(t) for t in tokens[:IDENTICAL]}) == 1,
              "logprobs_finite": all(finite(g) for g in gens)}
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
