"""One typed view of a DeepSeek-V3 `config.json`, built once per model.

Every variant the model code takes (q LoRA or a plain q projection, grouped routing,
YaRN) is decided here from config fields and never from tensor sizes. The model reads
`DSConfig`, not `hf_config`, so a config this code does not implement fails at
construction with the field's name instead of producing wrong logits later.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

# Routing schemes the DeepSeek-V3 family ships: sigmoid scores, with the load-balancing
# bias ("noaux_tc": auxiliary-loss-free, top-k corrected) used for selection only.
_SCORING_FUNCS = ("sigmoid",)
_TOPK_METHODS = ("noaux_tc",)
_ROPE_TYPES = ("default", "yarn")
# Fields a DeepSeek-V3 config.json must state (every release does). transformers'
# DeepseekV3Config fills any absent one with DeepSeek-V3-671B's value (kv_lora_rank 512,
# q_lora_rank 1536, n_group 8, ...), so the config object cannot tell a stated value from
# a guessed one; from_hf checks the raw config.json's keys when the caller passes them.
# q_lora_rank may be null (a plain q projection) but must be there.
STATED_FIELDS = ("hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
                 "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                 "v_head_dim", "intermediate_size", "moe_intermediate_size",
                 "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "n_group",
                 "topk_group", "routed_scaling_factor", "norm_topk_prob",
                 "first_k_dense_replace", "rms_norm_eps")


def yarn_mscale(factor: float, mscale: float) -> float:
    """YaRN's attention temperature (DeepSeek-V2 paper, appendix on YaRN): 0.1·m·ln(s)+1."""
    if factor <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


@dataclass(frozen=True)
class DSConfig:
    hidden_size: int
    vocab_size: int
    num_hidden_layers: int
    rms_norm_eps: float
    max_position_embeddings: int
    # MLA (DeepSeek-V2 paper §2.1): queries through an optional low-rank bottleneck,
    # keys/values through the kv_lora_rank latent that the KV cache stores.
    num_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope_theta: float
    # None for plain RoPE; otherwise the YaRN parameters in vLLM's `deepseek_yarn` form.
    rope_scaling: tuple[tuple[str, Any], ...] | None
    softmax_scale: float
    # FFN: dense MLP in the first `first_k_dense_replace` layers, MoE after.
    intermediate_size: int
    moe_intermediate_size: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    norm_topk_prob: bool
    scoring_func: str
    first_k_dense_replace: int
    moe_layer_freq: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense_replace and layer_idx % self.moe_layer_freq == 0

    def rope_parameters(self) -> dict[str, Any]:
        """The dict vLLM's `get_rope` takes for the 64 decoupled rope dims."""
        params: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if self.rope_scaling is not None:
            params.update(dict(self.rope_scaling))
        return params

    @classmethod
    def from_hf(cls, hf: Any, stated: Collection[str] | None = None) -> DSConfig:
        """Read and validate a DeepSeek-V3 config (transformers object or plain namespace).

        `stated`: the keys of the raw config.json (plus overrides); every STATED_FIELDS
        entry must be among them. None skips that check (no raw config to consult).
        """
        if stated is not None:
            absent = [n for n in STATED_FIELDS if n not in stated]
            if absent:
                raise ValueError(f"DeepSeek-V3 config.json does not state {', '.join(absent)}: "
                                 "every DeepSeek-V3 release does, and transformers would "
                                 "silently fill in DeepSeek-V3-671B's value")
        _require(hf, ("hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
                      "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                      "intermediate_size", "moe_intermediate_size", "n_routed_experts",
                      "num_experts_per_tok"))
        scoring = getattr(hf, "scoring_func", "sigmoid")
        if scoring not in _SCORING_FUNCS:
            raise ValueError(f"DeepSeek-V3 config: scoring_func={scoring!r} is not supported "
                             f"(expected one of {_SCORING_FUNCS})")
        topk_method = getattr(hf, "topk_method", "noaux_tc")
        if topk_method not in _TOPK_METHODS:
            raise ValueError(f"DeepSeek-V3 config: topk_method={topk_method!r} is not supported "
                             f"(expected one of {_TOPK_METHODS})")
        act = getattr(hf, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"DeepSeek-V3 config: hidden_act={act!r} is not supported (silu only)")
        n_group = int(getattr(hf, "n_group", 1) or 1)
        topk_group = int(getattr(hf, "topk_group", 1) or 1)
        if hf.n_routed_experts % n_group or not 1 <= topk_group <= n_group:
            raise ValueError(f"DeepSeek-V3 config: n_routed_experts={hf.n_routed_experts}, "
                             f"n_group={n_group}, topk_group={topk_group} do not form groups")
        if getattr(hf, "tie_word_embeddings", False):
            raise ValueError("DeepSeek-V3 config: tie_word_embeddings=true is not supported "
                             "(every DeepSeek-V3 release has a separate lm_head)")
        theta, rope_scaling = _rope(hf)
        qk_head_dim = hf.qk_nope_head_dim + hf.qk_rope_head_dim
        scale = qk_head_dim ** -0.5
        if rope_scaling is not None:
            # The rotary cos/sin carry mscale/mscale_all_dim (1.0 for DeepSeek's values);
            # the logits additionally get mscale_all_dim² through the softmax scale.
            m = yarn_mscale(dict(rope_scaling)["factor"], dict(rope_scaling).get("mscale_all_dim", 0.0))
            scale *= m * m
        q_lora_rank = getattr(hf, "q_lora_rank", None)
        return cls(
            hidden_size=hf.hidden_size, vocab_size=hf.vocab_size,
            num_hidden_layers=hf.num_hidden_layers, rms_norm_eps=float(hf.rms_norm_eps),
            max_position_embeddings=int(getattr(hf, "max_position_embeddings", 4096)),
            num_heads=hf.num_attention_heads,
            q_lora_rank=int(q_lora_rank) if q_lora_rank else None,
            kv_lora_rank=hf.kv_lora_rank, qk_nope_head_dim=hf.qk_nope_head_dim,
            qk_rope_head_dim=hf.qk_rope_head_dim, v_head_dim=hf.v_head_dim,
            rope_theta=theta, rope_scaling=rope_scaling, softmax_scale=scale,
            intermediate_size=hf.intermediate_size,
            moe_intermediate_size=hf.moe_intermediate_size,
            n_routed_experts=hf.n_routed_experts,
            n_shared_experts=int(getattr(hf, "n_shared_experts", 0) or 0),
            num_experts_per_tok=hf.num_experts_per_tok, n_group=n_group, topk_group=topk_group,
            routed_scaling_factor=float(getattr(hf, "routed_scaling_factor", 1.0)),
            norm_topk_prob=bool(getattr(hf, "norm_topk_prob", True)), scoring_func=scoring,
            first_k_dense_replace=int(getattr(hf, "first_k_dense_replace", 0)),
            moe_layer_freq=int(getattr(hf, "moe_layer_freq", 1)),
        )


def _require(hf: Any, names: tuple[str, ...]) -> None:
    missing = [n for n in names if getattr(hf, n, None) is None]
    if missing:
        raise ValueError(f"DeepSeek-V3 config is missing required field(s): {', '.join(missing)}")


def _rope(hf: Any) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
    # transformers 5 folds `rope_scaling` and `rope_theta` into `rope_parameters`;
    # older objects and plain namespaces keep them apart. Accept both.
    params = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
    theta = float(params.get("rope_theta", getattr(hf, "rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"DeepSeek-V3 config: rope_scaling type {rope_type!r} is not supported "
                         f"(expected one of {_ROPE_TYPES})")
    if rope_type == "default":
        return theta, None
    for key in ("factor", "original_max_position_embeddings"):
        if key not in params:
            raise ValueError(f"DeepSeek-V3 config: YaRN rope_scaling lacks {key!r}")
    keep = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
            "mscale", "mscale_all_dim")
    yarn = {k: params[k] for k in keep if k in params}
    # vLLM names DeepSeek's YaRN variant (interleaved dims, mscale ratio) `deepseek_yarn`.
    yarn["rope_type"] = "deepseek_yarn"
    return theta, tuple(sorted(yarn.items()))
