"""One family of MLA decode kernels: what each supports, how one is chosen, what all share.

Every adapter serves the same call on the same cache:

    decode(q, cache, block_table, seq_lens, *, plan=None, k_scale=None) -> (out, lse)

q [B, s_q, H, rank + rope] (absorbed query, nope part first); cache [blocks, page, rank + rope]
(one latent row per token, kv_c then k_pe; bf16/fp16, or fp8 e4m3 / vLLM's uint8 storage of it
with one fp32 `k_scale`); block_table [B, pages] int32; seq_lens [B] int32, cached tokens
including the s_q new ones, which are causal among themselves (query token t sees positions
< seq_len - s_q + 1 + t). Returns out [B, s_q, H, rank] in q's dtype and lse [B, s_q, H] fp32,
natural log; a row that sees no key gets out 0 and lse -inf.

`plan(block_table, seq_lens, s_q)` is the host-side step some libraries need before a batch
(FlashInfer's scheduler); it runs once per batch, outside CUDA graphs, and its result serves
every layer of that batch. The latent-cache write (`write`) and the layout are the family's:
one Triton kernel on GPUs, one torch path on CPUs.

This module and the adapters import no vLLM (the GPU test machine has none) and import their
kernel library only when an adapter is built. Asking for an adapter whose library is absent,
or that cannot serve the device, dtype, page size or query length, fails at build time with one
message naming the adapter and the reason; nothing is silently upcast or swapped.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

from ds_plugin import envs
from ds_plugin.kernels.mla_kv_cache import mla_kv_cache_write

KV_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
             torch.float8_e4m3fn: "fp8", torch.uint8: "fp8"}


class MLAKernelUnavailable(RuntimeError):
    """The asked-for decode adapter cannot serve here; the message names it and says why."""


@dataclass(frozen=True)
class Capabilities:
    """What one adapter serves. `None` in a limit means "no limit of its own"."""

    devices: frozenset[str]                      # of "cuda", "cpu"
    library: str | None                          # import name, checked when built
    pin: str                                     # the library version it is written against
    kv_dtypes: frozenset[str]                    # of "bf16", "fp16", "fp8"
    q_dtypes: frozenset[torch.dtype]
    pages: str                                   # the rule below, in words (README table)
    page_ok: Callable[[int], bool]
    max_query_len: int | None                    # tokens per request (MTP: 1 + drafts)
    compute: Callable[[tuple[int, int]], bool] | None = None  # CUDA (major, minor) accepted
    compute_text: str = "any"
    fp8_compute: Callable[[tuple[int, int]], bool] | None = None
    returns_lse: bool = True
    cuda_graphs: bool = True                     # decode is capturable in a full CUDA graph
    rank_rope: tuple[int, int] | None = (512, 64)


@dataclass(frozen=True)
class DecodeSpec:
    """The facts fixed when a model's attention is built (one adapter serves them all)."""

    num_heads: int
    scale: float
    page_size: int
    kv_dtype: str                                # "bf16", "fp16" or "fp8"
    device: torch.device
    q_dtype: torch.dtype = torch.bfloat16
    kv_lora_rank: int = 512
    rope_dim: int = 64
    max_query_len: int = 1
    max_seq_len: int = 163840


class MLADecodeAdapter:
    """Base of every adapter: capability checks, the latent-cache write, a default plan."""

    name: ClassVar[str]
    caps: ClassVar[Capabilities]

    def __init__(self, spec: DecodeSpec) -> None:
        reason = self.refusal(spec)
        if reason:
            raise MLAKernelUnavailable(f"ds-plugin MLA decode kernel {self.name!r}: {reason}")
        self.spec = spec

    @classmethod
    def refusal(cls, spec: DecodeSpec) -> str | None:
        """Why this adapter cannot serve `spec` here, or None. Imports the library to find out."""
        caps = cls.caps
        if spec.device.type not in caps.devices:
            return f"runs on {'/'.join(sorted(caps.devices))}, not {spec.device.type}"
        if spec.device.type == "cuda" and caps.compute is not None:
            cc = torch.cuda.get_device_capability(spec.device)
            if not caps.compute(cc):
                return f"needs compute capability {caps.compute_text}, this GPU is SM{cc[0]}{cc[1]}"
            if spec.kv_dtype == "fp8" and caps.fp8_compute and not caps.fp8_compute(cc):
                return f"FP8 KV cache is not supported on SM{cc[0]}{cc[1]}"
        if spec.kv_dtype not in caps.kv_dtypes:
            return (f"KV cache dtype {spec.kv_dtype} is not supported (supports "
                    f"{', '.join(sorted(caps.kv_dtypes))}); it is refused rather than upcast")
        if spec.q_dtype not in caps.q_dtypes:
            return f"query dtype {spec.q_dtype} is not supported"
        if not caps.page_ok(spec.page_size):
            return f"page size {spec.page_size} is not supported (pages: {caps.pages})"
        if caps.max_query_len is not None and spec.max_query_len > caps.max_query_len:
            return (f"{spec.max_query_len} query tokens per request (MTP) exceed its "
                    f"{caps.max_query_len}")
        if caps.rank_rope and (spec.kv_lora_rank, spec.rope_dim) != caps.rank_rope:
            return (f"latent shape rank {spec.kv_lora_rank} + rope {spec.rope_dim} is not "
                    f"{caps.rank_rope[0]} + {caps.rank_rope[1]}")
        if caps.library:
            try:
                importlib.import_module(caps.library)
            except Exception as exc:  # noqa: BLE001 - absent or broken install alike
                return f"its library {caps.library!r} does not import ({type(exc).__name__}: {exc})"
        return cls.library_refusal(spec)

    @classmethod
    def library_refusal(cls, spec: DecodeSpec) -> str | None:
        """An adapter's own further limits (after the library imported)."""
        return None

    # -- the family's shared pieces -------------------------------------------------------

    def write(self, kv_c: torch.Tensor, k_pe: torch.Tensor, cache: torch.Tensor,
              slots: torch.Tensor, k_scale: torch.Tensor | None) -> None:
        """Latent rows into the paged cache (negative slots skipped): one Triton kernel."""
        mla_kv_cache_write(kv_c, k_pe, cache, slots, k_scale)

    def plan(self, block_table: torch.Tensor, seq_lens: torch.Tensor, s_q: int, *,
             longest: int | None = None) -> object:
        """Host-side preparation for one batch, outside CUDA graphs (None: nothing to prepare).

        `longest` is a host-side bound on the batch's sequence lengths when the caller has one
        (vLLM's max_seq_len). The plan may serve any adapter instance built from the same spec.
        """
        return None

    def decode(self, q: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor,
               seq_lens: torch.Tensor, *, plan: object = None,
               k_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def cuda_page_rule(multiple: int = 1) -> Callable[[int], bool]:
    return lambda page: page >= 1 and page % multiple == 0


# name -> "module:Class". Adapters are imported only when named or considered.
ADAPTERS: dict[str, str] = {
    "triton": "ds_plugin.attention.mla_triton:TritonDecode",
    "torch": "ds_plugin.attention.mla_torch:TorchDecode",
    "flashinfer-fa3": "ds_plugin.attention.mla_flashinfer:FlashInferFa3",
    "flashinfer-fa2": "ds_plugin.attention.mla_flashinfer:FlashInferFa2",
    "flashinfer-trtllm-gen": "ds_plugin.attention.mla_flashinfer:FlashInferTrtllmGen",
    "flashinfer-cutlass": "ds_plugin.attention.mla_flashinfer:FlashInferCutlass",
    "flashmla": "ds_plugin.attention.mla_flashmla:FlashMLADecode",
}


@dataclass(frozen=True)
class DefaultRow:
    """One row of the measured default table: the preference order on a platform."""

    platform: str                                # "cpu", "sm90", "sm100", "cuda"
    kv_dtype: str                                # "bf16", "fp8" or "*"
    order: tuple[str, ...]
    evidence: str


# Chosen from measurements (benchmarks/bench_mla_adapters.py prints this table from a run).
DEFAULTS: tuple[DefaultRow, ...] = (
    DefaultRow("sm90", "bf16", ("flashinfer-fa3", "triton"),
               "H200 2026-12-01 (anchors E.1, page 64): fa3 3.8-3.9 TB/s at 16 heads and ~500 "
               "TFLOP/s at 128 heads, Triton 2.4-2.5 TB/s and 166 TFLOP/s; H200 2026-12-02 "
               "adapter bench: fa3 fastest on every 128-head row (0.55-0.77 of the bf16 mm "
               "rate), geomean best/own time fa3 1.00, fa2 0.66, triton 0.35"),
    DefaultRow("sm90", "fp8", ("flashinfer-fa3", "triton"),
               "provisional, H200 2026-12-02 adapter bench (eager timing): mixed; FlashInfer "
               "ahead at 128 heads and small batches, Triton 1.6-2.1x faster than fa3 at 16 "
               "heads with batch 32-128 x 32k context; geomean fa2 0.85, fa3 0.81, triton 0.55"),
    DefaultRow("cuda", "*", ("triton",), "the only adapter measured on other GPUs"),
    DefaultRow("cpu", "*", ("torch",), "the fp32 torch path; Triton only through the "
                                       "interpreter (DS_PLUGIN_TRITON_ON_CPU=1, tests)"),
)


def adapter_class(name: str) -> type[MLADecodeAdapter]:
    if name not in ADAPTERS:
        raise MLAKernelUnavailable(f"ds-plugin MLA decode kernel {name!r} is unknown; "
                                   f"DS_PLUGIN_MLA_KERNEL takes one of {', '.join(ADAPTERS)}")
    module, cls = ADAPTERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def default_row(plat: str, kv_dtype: str) -> DefaultRow:
    """The default table's row for a platform ("sm90", ...; other GPUs fall to "cuda")."""
    fallback = "cpu" if plat == "cpu" else "cuda"
    for wanted in (plat, fallback):
        for row in DEFAULTS:
            if row.platform == wanted and row.kv_dtype in (kv_dtype, "*"):
                return row
    raise LookupError(f"no default MLA decode row for {plat}")


def platform_of(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    major, _ = torch.cuda.get_device_capability(device)
    return {9: "sm90", 10: "sm100"}.get(major, "cuda")


@dataclass(frozen=True)
class Choice:
    name: str
    cls: type[MLADecodeAdapter]
    reason: str
    passed_over: tuple[str, ...] = field(default=())


def choose(spec: DecodeSpec) -> Choice:
    """The adapter that serves `spec`, and why. An explicit DS_PLUGIN_MLA_KERNEL is obeyed
    or refused (never replaced); otherwise the first usable entry of the default table."""
    explicit = envs.mla_kernel()
    if explicit:
        cls = adapter_class(explicit)
        reason = cls.refusal(spec)
        if reason:
            raise MLAKernelUnavailable(f"ds-plugin MLA decode kernel {explicit!r} "
                                       f"(DS_PLUGIN_MLA_KERNEL): {reason}")
        return Choice(explicit, cls, "DS_PLUGIN_MLA_KERNEL asks for it")
    plat = platform_of(spec.device)
    if spec.device.type == "cpu" and envs.triton_on_cpu():
        order = ("triton",)
        evidence = "DS_PLUGIN_TRITON_ON_CPU=1 runs the GPU path on the interpreter"
    else:
        row = default_row(plat, spec.kv_dtype)
        order, evidence = row.order, row.evidence
    skipped = []
    for name in order:
        cls = adapter_class(name)
        reason = cls.refusal(spec)
        if reason is None:
            why = f"default on {plat} with {spec.kv_dtype} KV ({evidence})"
            if skipped:
                why += "; passed over " + "; ".join(skipped)
            return Choice(name, cls, why, tuple(skipped))
        skipped.append(f"{name}: {reason}")
    raise MLAKernelUnavailable("ds-plugin MLA decode: no adapter serves this setup: "
                               + "; ".join(skipped))


def lse_or_empty(lse: torch.Tensor) -> torch.Tensor:
    """Libraries mark a row that saw no key with +inf (FlashMLA); the family says -inf."""
    return torch.where(lse == math.inf, -math.inf, lse)
