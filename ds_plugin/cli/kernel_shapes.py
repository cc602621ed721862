"""The per-rank kernel shapes a DeepSeek-V3 config.json serves, as a pure function.

`ds-plugin precompile` compiles ds-plugin's Triton kernels for exactly these shapes. The
token counts are the batch sizes vLLM 0.32 captures in CUDA graphs by default
(vllm/config/vllm.py, `_set_cudagraph_sizes`: 1, 2, 4, then every 8 to 248, then every 16
to 512; with speculative decoding also those request counts times the decode query
length), plus a few chunked-prefill sizes. No vLLM, torch or GPU is needed to compute them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Gemm", "Moe", "Mla", "Plan", "PlanError", "capture_sizes", "plan"]

PREFILL_TOKENS = (1000, 2048, 8192)  # chunked prefill: aligned and unaligned M past 512
DEFAULT_MAX_CAPTURE = 512


class PlanError(ValueError):
    """A config or parallel setting the shapes cannot be derived from (names the field)."""


@dataclass(frozen=True)
class Gemm:
    name: str
    n: int
    k: int


@dataclass(frozen=True)
class Moe:
    experts: int  # on this rank
    hidden: int
    intermediate: int  # per expert, on this rank
    top_k: int


@dataclass(frozen=True)
class Mla:
    heads: int  # on this rank
    rank: int
    rope: int
    page: int
    fp8_cache: bool
    max_model_len: int


@dataclass(frozen=True)
class Plan:
    fp8: bool
    gemms: tuple[Gemm, ...]
    moe: Moe | None
    mla: Mla
    tokens: tuple[int, ...]  # M of the GEMMs and MoE
    decode_batches: tuple[int, ...]  # requests per MLA decode launch
    query_len: int  # tokens per request per decode step (1 + draft tokens)


def _request_counts(max_reqs: int) -> list[int]:
    counts = [n for n in (1, 2, 4) if n <= max_reqs]
    counts += list(range(8, min(max_reqs + 1, 256), 8))
    counts += list(range(256, max_reqs + 1, 16))
    return sorted(set(counts))


def capture_sizes(max_capture: int = DEFAULT_MAX_CAPTURE, query_len: int = 1) -> list[int]:
    """vLLM's default CUDA-graph sizes in tokens (the request-count grid times query_len)."""
    return [n * query_len for n in _request_counts(max_capture // query_len)] or [query_len]


def _field(cfg: dict, name: str):
    if name not in cfg or cfg[name] is None:
        raise PlanError(f"config.json: {name} is missing")
    return cfg[name]


def _div(total: int, parts: int, what: str) -> int:
    if total % parts:
        raise PlanError(f"{what} = {total} does not split over {parts} ranks")
    return total // parts


def _is_block_fp8(cfg: dict) -> bool:
    q = cfg.get("quantization_config") or {}
    return q.get("quant_method") == "fp8" and list(q.get("weight_block_size") or []) == [128, 128]


def plan(cfg: dict, tp: int = 1, ep: bool = False, spec_tokens: int = 0,
         max_capture: int = DEFAULT_MAX_CAPTURE, page: int = 16, fp8_cache: bool = False,
         max_model_len: int | None = None, prefill: tuple[int, ...] = PREFILL_TOKENS) -> Plan:
    """Shapes of one rank serving `cfg` (a parsed config.json) with tensor parallel `tp`
    (expert parallel over the same ranks with `ep`) and `spec_tokens` MTP draft tokens."""
    if tp < 1 or spec_tokens < 0:
        raise PlanError(f"tp must be >= 1 and spec tokens >= 0, got {tp}, {spec_tokens}")
    h = int(_field(cfg, "hidden_size"))
    heads = _div(int(_field(cfg, "num_attention_heads")), tp, "num_attention_heads")
    q_lora = cfg.get("q_lora_rank")
    kv_lora, nope = int(_field(cfg, "kv_lora_rank")), int(_field(cfg, "qk_nope_head_dim"))
    rope, v = int(_field(cfg, "qk_rope_head_dim")), int(_field(cfg, "v_head_dim"))
    gemms = []
    if q_lora:
        gemms += [Gemm("fused_qkv_a_proj", int(q_lora) + kv_lora + rope, h),
                  Gemm("q_b_proj", heads * (nope + rope), int(q_lora))]
    else:
        gemms += [Gemm("q_proj", heads * (nope + rope), h),
                  Gemm("kv_a_proj_with_mqa", kv_lora + rope, h)]
    gemms += [Gemm("kv_b_proj", heads * (nope + v), kv_lora), Gemm("o_proj", h, heads * v)]
    if int(cfg.get("first_k_dense_replace", 0)) > 0:
        inter = _div(int(_field(cfg, "intermediate_size")), tp, "intermediate_size")
        gemms += [Gemm("mlp.gate_up_proj", 2 * inter, h), Gemm("mlp.down_proj", h, inter)]
    moe = None
    experts = int(cfg.get("n_routed_experts") or 0)
    if experts:
        moe_inter = int(_field(cfg, "moe_intermediate_size"))
        shared = int(cfg.get("n_shared_experts") or 0)
        if shared:
            si = _div(moe_inter * shared, tp, "moe_intermediate_size x n_shared_experts")
            gemms += [Gemm("shared_experts.gate_up_proj", 2 * si, h),
                      Gemm("shared_experts.down_proj", h, si)]
        if ep:
            moe = Moe(_div(experts, tp, "n_routed_experts"), h, moe_inter,
                      int(_field(cfg, "num_experts_per_tok")))
        else:
            moe = Moe(experts, h, _div(moe_inter, tp, "moe_intermediate_size"),
                      int(_field(cfg, "num_experts_per_tok")))
    q_len = 1 + spec_tokens
    decode = capture_sizes(max_capture, q_len)
    mml = int(max_model_len or cfg.get("max_position_embeddings") or 4096)
    return Plan(fp8=_is_block_fp8(cfg), gemms=tuple(gemms), moe=moe,
                mla=Mla(heads, kv_lora, rope, page, fp8_cache, mml),
                tokens=tuple(sorted(set(capture_sizes(max_capture)) | set(decode)
                                      | set(prefill))),
                decode_batches=tuple(t // q_len for t in decode), query_len=q_len)
