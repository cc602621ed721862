"""Tiny DeepSeek-V3 checkpoints in quantization formats vLLM itself implements, for proofs that
our model classes take vLLM's methods and our loader maps their tensor names.

The tiny model and its names are checkpoint.py's; every linear weight that block-FP8
quantizes (attention, dense MLP, shared and routed experts, the MTP layer's too) is stored in
the format, the router, norms, embeddings and heads stay bf16:

- `awq` (AutoAWQ GEMM, vLLM's `awq` / AutoAWQ loader): `qweight` int32 (K, N/8) and `qzeros`
  int32 (K/G, N/8), eight 4-bit values per word in AutoAWQ's nibble order (column
  8j + [0, 2, 4, 6, 1, 3, 5, 7][i] in nibble i), `scales` fp16 (K/G, N); w = (q - z) * s.
  Group size 128; zero points 8 and power-of-two scales.
- `nvfp4` (ModelOpt NVFP4, vLLM's `modelopt_fp4`): `weight` uint8 (N, K/2) e2m1 pairs (the
  even element in the low nibble), `weight_scale` float8_e4m3fn (N, K/16), `weight_scale_2`
  and `input_scale` fp32 scalars; w = e2m1 * weight_scale * weight_scale_2.
- `mxfp4` (Quark OCP MXFP4, vLLM's `quark`): `weight` uint8 (N, K/2) e2m1 pairs as above,
  `weight_scale` uint8 (N, K/32) e8m0 exponents; w = e2m1 * 2**(scale - 127).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ds_plugin.kernels.fp8_format import FP8, round_scale_ue8m0
from ds_plugin.testing.checkpoint import (TinyConfig, _write_files, make_weights, tensor_specs,
                                          write_tokenizer)

FORMATS = ("awq", "nvfp4", "mxfp4")
AWQ_GROUP = 128
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])

_FP4_SPEC = {"dtype": "fp4", "qscheme": "per_group", "group_size": 32, "ch_axis": -1,
             "scale_format": "e8m0", "scale_calculation_mode": "even",
             "round_method": "half_even", "observer_cls": "PerBlockMXObserver",
             "symmetric": None, "mx_element_dtype": None, "is_scale_quant": False,
             "scale_type": "float"}


def quant_config(fmt: str) -> dict[str, Any]:
    """config.json `quantization_config` of each format, as its exporter writes it."""
    if fmt == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": AWQ_GROUP, "zero_point": True,
                "version": "gemm", "modules_to_not_convert": None}
    if fmt == "nvfp4":
        # config.json's form ("ignore"; hf_quant_config.json calls it exclude_modules).
        return {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
                "kv_cache_quant_algo": None, "ignore": ["lm_head", "model.layers.*.mlp.gate"]}
    if fmt == "mxfp4":
        return {"quant_method": "quark", "quant_mode": "eager_mode",
                "global_quant_config": {"weight": {**_FP4_SPEC, "is_dynamic": False},
                                        "input_tensors": {**_FP4_SPEC, "is_dynamic": True},
                                        "output_tensors": None, "bias": None,
                                        "target_device": None},
                "exclude": ["lm_head", "re:model.layers.*.mlp.gate$"],
                "layer_quant_config": {}, "layer_type_quant_config": {},
                "kv_cache_quant_config": {}, "algo_config": None, "softmax_quant_spec": None,
                "export": {"kv_cache_group": [], "min_kv_scale": 0.0, "pack_method": "reorder",
                           "weight_format": "real_quantized", "weight_merge_groups": None}}
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def _pack_awq(q: torch.Tensor) -> torch.Tensor:
    """(R, C) values in [0, 15], C a multiple of 8 -> (R, C/8) int32 in AutoAWQ order."""
    r, c = q.shape
    q = q.to(torch.int64).view(r, c // 8, 8)
    word = torch.zeros(r, c // 8, dtype=torch.int64)
    for i, col in enumerate(AWQ_ORDER):
        word |= q[..., col] << (4 * i)
    return (word - ((word >> 31) & 1) * (1 << 32)).to(torch.int32)  # as two's complement


def _awq(w: torch.Tensor) -> dict[str, torch.Tensor]:
    wt = w.t().contiguous()  # AutoAWQ stores (K, N)
    k, n = wt.shape
    g = wt.view(k // AWQ_GROUP, AWQ_GROUP, n)
    s = round_scale_ue8m0(g.abs().amax(dim=1).clamp_min(1e-8) / 7)        # (K/G, N)
    q = (torch.round(g / s[:, None, :]) + 8).clamp(0, 15).view(k, n)
    zeros = torch.full((k // AWQ_GROUP, n), 8)
    return {"qweight": _pack_awq(q), "qzeros": _pack_awq(zeros), "scales": s.to(torch.float16)}


def _e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """Nearest e2m1 code (sign bit 3, magnitude index in bits 0-2) of each value."""
    idx = (v.abs()[..., None] - E2M1).abs().argmin(dim=-1)
    return (idx | ((v < 0).to(idx.dtype) << 3)).to(torch.uint8)


def _pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _nvfp4(w: torch.Tensor) -> dict[str, torch.Tensor]:
    n, k = w.shape
    blocks = w.view(n, k // 16, 16)
    global_scale = float(w.abs().max()) / (6.0 * 448.0)
    scale = (blocks.abs().amax(dim=-1) / 6.0 / global_scale).clamp(min=2 ** -6).to(FP8)
    step = scale.float() * global_scale
    codes = _e2m1_codes(blocks / step[..., None]).view(n, k)
    return {"weight": _pack_fp4(codes), "weight_scale": scale,
            "weight_scale_2": torch.tensor(global_scale), "input_scale": torch.tensor(1 / 448.0)}


def _mxfp4(w: torch.Tensor) -> dict[str, torch.Tensor]:
    n, k = w.shape
    blocks = w.view(n, k // 32, 32)
    exp = torch.floor(torch.log2(blocks.abs().amax(dim=-1).clamp_min(2 ** -100))) - 2
    codes = _e2m1_codes(blocks / torch.exp2(exp)[..., None]).view(n, k)
    return {"weight": _pack_fp4(codes), "weight_scale": (exp + 127).clamp(0, 254).to(torch.uint8)}


_ENCODE = {"awq": _awq, "nvfp4": _nvfp4, "mxfp4": _mxfp4}


def checkpoint_tensors(cfg: TinyConfig, fmt: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of a `fmt` checkpoint of the tiny model, by their release names."""
    if fmt not in _ENCODE:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    encode = _ENCODE[fmt]
    kinds = {name: kind for name, _, kind in tensor_specs(cfg)}
    out: dict[str, torch.Tensor] = {}
    for name, w in make_weights(cfg, seed).items():
        if kinds[name] == "linear":
            stem = name.removesuffix("weight")
            out.update({stem + suffix: t.contiguous() for suffix, t in encode(w).items()})
        elif kinds[name] == "bias":
            out[name] = w.float().contiguous()
        else:
            out[name] = w.to(torch.bfloat16).contiguous()
    return out


def write_foreign_checkpoint(out_dir: str | Path, fmt: str, cfg: TinyConfig | None = None,
                             tokenizer: str = "deepseek-v3", seed: int = 0) -> Path:
    """Write the tiny model in format `fmt` (one of FORMATS) and return its path."""
    cfg = cfg or TinyConfig()
    config = cfg.hf_config("bf16", tokenizer)
    config["quantization_config"] = quant_config(fmt)
    out = _write_files(Path(out_dir), checkpoint_tensors(cfg, fmt, seed), config, cfg.n_shards)
    write_tokenizer(out, tokenizer)
    return out

