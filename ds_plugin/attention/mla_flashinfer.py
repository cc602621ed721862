"""FlashInfer adapters: `flashinfer.mla.BatchMLAPagedAttentionWrapper` (flashinfer-python 0.7.2).

One wrapper class, four kernel templates, picked by FlashInfer's `backend=`:
- `fa3` Hopper (SM90) and `fa2` (SM80+): CSR page metadata, LSE in natural log, FP8 KV on SM90
  only (per-tensor scale passed as floats, bf16 query);
- `trtllm-gen` (SM100/103/107) and `cutlass` (SM100/110): dense block-table metadata. trtllm-gen
  gives a base-2 LSE (converted here) and needs an FP8 *query* for an FP8 cache, which this
  family does not produce, so FP8 is refused there; cutlass returns no LSE, serves one query
  token per request and uses a fixed softmax scale of 1/sqrt(192), so the query is pre-scaled.
Only `fa3`/`fa2` have been run (H200); the Blackwell two are declared from FlashInfer's source.

Calls use 0.7.2's keyword form: `plan(metadata=MLAPlanMetadata.csr(...) | .dense(...), ...)`
and `run(query=..., kv_cache=...)` with the packed 576-wide query and cache (no q_nope/q_pe).

`plan` runs once per batch on the host (FlashInfer's scheduler reads the lengths there) and
re-plans one wrapper, which every layer of the batch then runs; a plan is valid until the next.
Not capturable in a full CUDA graph here (graph mode needs per-batch-size wrappers with
reserved buffers); in vLLM the decode then runs between piecewise graphs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ds_plugin.attention.mla_family import Capabilities, DecodeSpec, MLADecodeAdapter

PIN = "flashinfer-python==0.7.2.post1"
_WORKSPACE_BYTES = 128 << 20
_FP8 = torch.float8_e4m3fn


@dataclass(frozen=True)
class FlashInferPlan:
    owner: FlashInferDecode     # the adapter whose wrapper holds this plan
    token: int
    batch: int
    s_q: int


def csr_metadata(block_table: torch.Tensor, seq_lens: torch.Tensor, s_q: int, page: int):
    """FlashInfer's CSR form of a batch: (qo_indptr, kv_indptr, kv_indices, kv_len_arr), int32.

    kv_indices lists each request's used pages only, so block-table entries past a request's
    length are never read.
    """
    batch = seq_lens.shape[0]
    lens = seq_lens.to(torch.int32)
    pages = (lens + page - 1) // page
    kv_indptr = torch.zeros(batch + 1, dtype=torch.int32, device=lens.device)
    kv_indptr[1:] = torch.cumsum(pages, 0)
    used = torch.arange(block_table.shape[1], device=lens.device)[None, :] < pages[:, None]
    kv_indices = block_table.to(torch.int32)[used]
    qo_indptr = torch.arange(batch + 1, dtype=torch.int32, device=lens.device) * s_q
    return qo_indptr, kv_indptr, kv_indices.contiguous(), lens.contiguous()


def _sm90(cc):
    return cc[0] == 9


class FlashInferDecode(MLADecodeAdapter):
    backend: ClassVar[str]
    dense_metadata: ClassVar[bool] = False
    lse_base: ClassVar[str] = "basee"           # FlashInfer's lse_mode for this template
    fixed_scale: ClassVar[float | None] = None
    since: ClassVar[tuple[int, ...]] = (0, 7, 0)  # first release whose wrapper takes `backend`

    def __init__(self, spec: DecodeSpec) -> None:
        super().__init__(spec)
        self._wrapper = None        # made on the first plan: in vLLM only the builder plans
        self._tokens = itertools.count(1)
        self._planned = 0
        self._kv_type = _FP8 if spec.kv_dtype == "fp8" else spec.q_dtype
        self._q_mult = 1.0 if self.fixed_scale is None else spec.scale / self.fixed_scale
        self._scale_key, self._scale = None, None

    @classmethod
    def library_refusal(cls, spec: DecodeSpec) -> str | None:
        import flashinfer

        have = tuple(int(p) for p in flashinfer.__version__.split(".")[:3] if p.isdigit())
        if have < cls.since:
            return (f"flashinfer {flashinfer.__version__} predates its {cls.backend!r} MLA "
                    f"template in the planned wrapper (needs {'.'.join(map(str, cls.since))})")
        heads = spec.num_heads
        if spec.max_query_len > 1 and 64 % heads and heads != 128:
            # FlashInfer's causal tiles are 64 or 128 query rows; a tile edge inside a token's
            # heads drops a visible key (FlashInfer refuses such plans itself, per batch).
            return f"{heads} heads with multi-token queries do not fit its causal query tiles"
        return None

    def _metadata(self, block_table, seq_lens, s_q):
        page = self.spec.page_size
        if self.dense_metadata:
            cum_q = torch.arange(seq_lens.shape[0] + 1, dtype=torch.int32,
                                 device=seq_lens.device) * s_q
            return self._metadata_cls.dense(cum_q, block_table.to(torch.int32),
                                            seq_lens.to(torch.int32), max_q_len=s_q)
        return self._metadata_cls.csr(*csr_metadata(block_table, seq_lens, s_q, page))

    def plan(self, block_table, seq_lens, s_q, *, longest=None):
        spec = self.spec
        if self._wrapper is None:
            from flashinfer.mla import BatchMLAPagedAttentionWrapper, MLAPlanMetadata

            self._metadata_cls = MLAPlanMetadata
            workspace = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=spec.device)
            self._wrapper = BatchMLAPagedAttentionWrapper(workspace, backend=self.backend)
        self._wrapper.plan(
            metadata=self._metadata(block_table, seq_lens, s_q), num_heads=spec.num_heads,
            head_dim_ckv=spec.kv_lora_rank, head_dim_kpe=spec.rope_dim,
            page_size=spec.page_size, causal=True,
            sm_scale=spec.scale if self.fixed_scale is None else self.fixed_scale,
            q_data_type=spec.q_dtype, kv_data_type=self._kv_type,
            lse_mode=self.lse_base if self.caps.returns_lse else "none")
        self._planned = next(self._tokens)
        return FlashInferPlan(self, self._planned, seq_lens.shape[0], s_q)

    def _float_scale(self, k_scale: torch.Tensor) -> float:
        # FlashInfer takes the FP8 scale as a Python float: read it once per value (a host
        # sync only when the tensor changed; vLLM sets it at load).
        key = (k_scale.data_ptr(), k_scale._version)
        if key != self._scale_key:
            self._scale_key, self._scale = key, float(k_scale)
        return self._scale

    def decode(self, q, cache, block_table, seq_lens, *, plan=None, k_scale=None):
        batch, s_q, heads, dim = q.shape
        if plan is None:
            plan = self.plan(block_table, seq_lens, s_q)
        if plan.token != plan.owner._planned or (plan.batch, plan.s_q) != (batch, s_q):
            raise RuntimeError(f"ds-plugin MLA decode kernel {self.name!r}: run with a plan "
                               "that is not its wrapper's current one")
        wrapper = plan.owner._wrapper
        rank = self.spec.kv_lora_rank
        query = q.reshape(batch * s_q, heads, dim)
        if self._q_mult != 1.0:
            query = query * self._q_mult
        if cache.dtype == torch.uint8:
            cache = cache.view(_FP8)
        out = torch.empty(batch * s_q, heads, rank, dtype=q.dtype, device=q.device)
        scales = {}
        if self.spec.kv_dtype == "fp8":
            scale = self._float_scale(k_scale)
            scales = dict(ckv_scale=scale, kpe_scale=scale)
        if not self.caps.returns_lse:
            wrapper.run(query=query, kv_cache=cache, out=out, **scales)
            return out.view(batch, s_q, heads, rank), None
        lse = torch.empty(batch * s_q, heads, dtype=torch.float32, device=q.device)
        wrapper.run(query=query, kv_cache=cache, out=out, lse=lse, return_lse=True,
                    return_lse_base_on_e=self.lse_base == "basee", **scales)
        if self.lse_base == "base2":
            lse = lse * math.log(2.0)
        return out.view(batch, s_q, heads, rank), lse.view(batch, s_q, heads)


def _caps(**kw) -> Capabilities:
    base = dict(devices=frozenset({"cuda"}), library="flashinfer.mla", pin=PIN,
                q_dtypes=frozenset({torch.bfloat16}), pages="any",
                page_ok=lambda page: page >= 1, max_query_len=None, cuda_graphs=False)
    base.update(kw)
    return Capabilities(**base)


def _divides_128(page: int) -> bool:
    return 1 <= page <= 128 and 128 % page == 0


class FlashInferFa3(FlashInferDecode):
    name = "flashinfer-fa3"
    backend = "fa3"
    caps = _caps(kv_dtypes=frozenset({"bf16", "fp8"}), compute=_sm90,
                 compute_text="SM90 (Hopper)", fp8_compute=_sm90)


class FlashInferFa2(FlashInferDecode):
    name = "flashinfer-fa2"
    backend = "fa2"
    caps = _caps(kv_dtypes=frozenset({"bf16", "fp8"}), compute=lambda cc: cc >= (8, 0),
                 compute_text="SM80 or newer", fp8_compute=_sm90)


class FlashInferTrtllmGen(FlashInferDecode):
    name = "flashinfer-trtllm-gen"
    backend = "trtllm-gen"
    dense_metadata = True
    lse_base = "base2"
    since = (0, 7, 2)
    caps = _caps(kv_dtypes=frozenset({"bf16"}), pages="divides 128", page_ok=_divides_128,
                 compute=lambda cc: cc in ((10, 0), (10, 3), (10, 7)),
                 compute_text="SM100/SM103/SM107 (Blackwell)")


class FlashInferCutlass(FlashInferDecode):
    name = "flashinfer-cutlass"
    backend = "cutlass"
    dense_metadata = True
    lse_base = "none"
    fixed_scale = 1.0 / math.sqrt(192)
    caps = _caps(kv_dtypes=frozenset({"bf16"}), pages="divides 128", page_ok=_divides_128,
                 compute=lambda cc: cc[0] in (10, 11), compute_text="SM100/SM110 (Blackwell)",
                 max_query_len=1, returns_lse=False)
