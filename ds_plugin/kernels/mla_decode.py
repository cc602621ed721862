"""Paged MLA decode (absorbed attention in latent space), split-KV with an LSE merge.

All query heads of a sequence share one latent key per cached token: a 576-wide row whose first
kv_lora_rank (512) values are also the value. One program therefore loads a tile of cached rows
once and multiplies it against a block of query rows: `heads x s_q` rows, where s_q > 1 query
tokens per sequence (MTP verification) are causal among themselves. Query token t of a sequence
with `seq_len` cached tokens (new tokens included) sees positions `< seq_len - s_q + 1 + t`.

Flash-decoding: each sequence's keys are cut into `num_splits` equal pieces, each program reduces
one piece to a partial output and a base-2 LSE in an fp32 workspace, and a second kernel merges the
pieces. The piece length is computed on the device from each sequence's own length, so one
`num_splits`, chosen on the host from shapes only, serves any lengths: no host sync, and a CUDA
graph captured once replays for other lengths. With one split the first kernel writes the final
output directly.

FP8 e4m3 cache: rows are upcast to fp16 in registers (the query too; the ways a tile can be
converted are in mla_tiles.py), and the per-tensor `k_scale` is applied to the scores and to the
output (the value is the same latent, so the same scale).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from ds_plugin.kernels.mla_kv_cache import as_fp8_cache
from ds_plugin.kernels.mla_tiles import attend, convert_tile, load_tile

LOG2E = 1.4426950408889634
MIN_TOKENS_PER_SPLIT = 256


@triton.jit
def _mla_decode_part_kernel(
        Q, KV, BT, SEQ, KSCALE, OP, LP, O, LSE,
        sm_scale_log2,
        stride_q_b, stride_q_r, stride_kv_blk, stride_kv_tok, stride_bt_b,
        stride_op_b, stride_op_r, stride_op_s, stride_lp_b, stride_lp_r,
        stride_o_b, stride_o_r, stride_lse_b,
        num_splits, work_hint, num_blocks,
        ROWS: tl.constexpr, HEADS: tl.constexpr, S_Q: tl.constexpr,
        RANK: tl.constexpr, ROPE: tl.constexpr, PAGE: tl.constexpr,
        FP8: tl.constexpr, DIRECT: tl.constexpr, DOT_F32: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
        PAGED_TILE: tl.constexpr = False, FP8_CVT: tl.constexpr = 0, TMA: tl.constexpr = False):
    # Head blocks of one (sequence, split) are adjacent in launch order, so they run together and
    # the second reads the shared key tile from L2 rather than HBM.
    hb = tl.program_id(0)
    b = tl.program_id(1)
    sp = tl.program_id(2)
    seq_len = tl.load(SEQ + b)
    rows = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < ROWS
    # Causal extent of each query row (rows are token-major: row = t * HEADS + head).
    row_end = seq_len - S_Q + 1 + rows // HEADS
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = sp * split_len
    end = tl.minimum(start + split_len, seq_len)

    offs_c = tl.arange(0, RANK)
    offs_r = tl.arange(0, ROPE)
    # Word modes (mla_tiles) address the cache in int32 units (4 codes a word).
    WORD: tl.constexpr = 4 if FP8_CVT == 2 or FP8_CVT == 4 else 1
    offs_kc = tl.arange(0, RANK // WORD)
    offs_kr = RANK // WORD + tl.arange(0, ROPE // WORD)
    q_row = Q + b.to(tl.int64) * stride_q_b + rows[:, None] * stride_q_r
    q_c = tl.load(q_row + offs_c[None, :], mask=row_ok[:, None], other=0.0)
    q_r = tl.load(q_row + RANK + offs_r[None, :], mask=row_ok[:, None], other=0.0)
    if DOT_F32:
        q_c = q_c.to(tl.float32)
        q_r = q_r.to(tl.float32)
    elif FP8:
        # e4m3 -> fp16 is one hardware convert per two values (bf16 needs a second one per value,
        # which halved fp8 throughput on the H200); fp16 also keeps q's 10 mantissa bits. An
        # absorbed query beyond fp16's 65504 would overflow: DeepSeek-V3's are orders smaller.
        q_c = q_c.to(tl.float16)
        q_r = q_r.to(tl.float16)
    # A host float may arrive typed fp64 (Inductor lowers user kernels that way); pin fp32 so
    # the loop-carried softmax state keeps one type.
    qk_scale = tl.cast(sm_scale_log2, tl.float32)
    v_scale = 1.0
    if FP8:
        v_scale = tl.load(KSCALE)
        if FP8_CVT == 2:
            v_scale = v_scale * 256.0  # the integer convert yields value * 2^-8
        qk_scale = qk_scale * v_scale

    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, RANK], tl.float32)
    bt_row = BT + b.to(tl.int64) * stride_bt_b
    if WORD == 4:
        # Word modes: the e4m3 cache read as int32 (4 codes a word); strides arrive in bytes.
        KV = KV.to(tl.pointer_type(tl.int32), bitcast=True)
        stride_kv_blk = stride_kv_blk // 4
        stride_kv_tok = stride_kv_tok // 4
    tail = start
    if TMA:
        # Full tiles through the tensor-memory accelerator: one 3-D box [1, BLOCK_N, width] per
        # page slice, no masks (whole tiles lie inside the sequence); the last partial tile, whose
        # page rows past the sequence may hold anything, goes through the masked loads below.
        n_blocks = num_blocks
        if WORD == 4:
            desc_c = tl.make_tensor_descriptor(KV, [n_blocks, PAGE, (RANK + ROPE) // 4],
                                               [stride_kv_blk, stride_kv_tok, 1], [1, BLOCK_N, RANK // 4])
            desc_r = tl.make_tensor_descriptor(KV + RANK // 4, [n_blocks, PAGE, ROPE // 4],
                                               [stride_kv_blk, stride_kv_tok, 1], [1, BLOCK_N, ROPE // 4])
        else:
            desc_c = tl.make_tensor_descriptor(KV, [n_blocks, PAGE, RANK + ROPE],
                                               [stride_kv_blk, stride_kv_tok, 1], [1, BLOCK_N, RANK])
            desc_r = tl.make_tensor_descriptor(KV + RANK, [n_blocks, PAGE, ROPE],
                                               [stride_kv_blk, stride_kv_tok, 1], [1, BLOCK_N, ROPE])
        tail = start + (end - start) // BLOCK_N * BLOCK_N
        for n0 in range(start, tail, BLOCK_N):
            page = tl.load(bt_row + n0 // PAGE)
            x_c = desc_c.load([page, n0 % PAGE, 0]).reshape(BLOCK_N, RANK // WORD)
            x_r = desc_r.load([page, n0 % PAGE, 0]).reshape(BLOCK_N, ROPE // WORD)
            k_c = convert_tile(x_c, FP8_CVT, RANK, BLOCK_N)
            k_r = convert_tile(x_r, FP8_CVT, ROPE, BLOCK_N)
            if DOT_F32 or (FP8 and FP8_CVT == 0):
                k_c = k_c.to(q_c.dtype)
                k_r = k_r.to(q_c.dtype)
            m, l, acc = attend(q_c, q_r, k_c, k_r, n0 + tl.arange(0, BLOCK_N), row_end, qk_scale,
                               m, l, acc, FP8, O.dtype.element_ty)
    for n0 in range(tail, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < end
        # Masked loads: pages past the sequence (and their block-table entries) may hold anything.
        if PAGED_TILE and PAGE % BLOCK_N == 0:
            # Tiles start at multiples of BLOCK_N, which divides PAGE: one page per tile.
            page = tl.load(bt_row + n0 // PAGE).to(tl.int64)
            kv_row = KV + page * stride_kv_blk + (n0 % PAGE + tl.arange(0, BLOCK_N)) * stride_kv_tok
        else:
            page = tl.load(bt_row + n // PAGE, mask=n_ok, other=0).to(tl.int64)
            kv_row = KV + page * stride_kv_blk + (n % PAGE) * stride_kv_tok
        k_c = load_tile(kv_row, offs_kc, n_ok, FP8_CVT, RANK, BLOCK_N)
        k_r = load_tile(kv_row, offs_kr, n_ok, FP8_CVT, ROPE, BLOCK_N)
        if DOT_F32 or (FP8 and FP8_CVT == 0):
            k_c = k_c.to(q_c.dtype)
            k_r = k_r.to(q_c.dtype)
        m, l, acc = attend(q_c, q_r, k_c, k_r, n, row_end, qk_scale, m, l, acc, FP8,
                           O.dtype.element_ty)

    empty = l == 0.0
    out = acc / tl.where(empty, 1.0, l)[:, None]
    lse2 = tl.where(empty, float("-inf"), m + tl.log2(tl.where(empty, 1.0, l)))
    if FP8:
        out = out * v_scale
    if DIRECT:
        o_ptr = O + b.to(tl.int64) * stride_o_b + rows[:, None] * stride_o_r + offs_c[None, :]
        tl.store(o_ptr, out.to(O.dtype.element_ty), mask=row_ok[:, None])
        tl.store(LSE + b.to(tl.int64) * stride_lse_b + rows, lse2 * 0.6931471805599453, mask=row_ok)
    else:
        op = OP + b.to(tl.int64) * stride_op_b + rows[:, None] * stride_op_r + sp * stride_op_s
        tl.store(op + offs_c[None, :], out, mask=row_ok[:, None])
        tl.store(LP + b.to(tl.int64) * stride_lp_b + rows * stride_lp_r + sp, lse2, mask=row_ok)


@triton.jit
def _mla_decode_merge_kernel(OP, LP, O, LSE, num_splits,
                             stride_op_b, stride_op_r, stride_op_s, stride_lp_b, stride_lp_r,
                             stride_o_b, stride_o_r, stride_lse_b,
                             ROWS: tl.constexpr, RANK: tl.constexpr):
    b = tl.program_id(0)
    r = tl.program_id(1)
    lp = LP + b.to(tl.int64) * stride_lp_b + r * stride_lp_r
    op = OP + b.to(tl.int64) * stride_op_b + r * stride_op_r
    offs = tl.arange(0, RANK)
    m = tl.load(lp)
    for s in range(1, num_splits):
        m = tl.maximum(m, tl.load(lp + s))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = m_safe * 0.0
    acc = tl.zeros([RANK], tl.float32)
    for s in range(num_splits):
        w = tl.exp2(tl.load(lp + s) - m_safe)
        total += w
        acc += w * tl.load(op + s * stride_op_s + offs)
    empty = total == 0.0
    out = acc / tl.where(empty, 1.0, total)
    lse2 = tl.where(empty, float("-inf"), m_safe + tl.log2(tl.where(empty, 1.0, total)))
    tl.store(O + b.to(tl.int64) * stride_o_b + r * stride_o_r + offs, out.to(O.dtype.element_ty))
    tl.store(LSE + b.to(tl.int64) * stride_lse_b + r, lse2 * 0.6931471805599453)


def _config(block_h, block_n, stages, paged=True, cvt=0):
    return triton.Config({"BLOCK_H": block_h, "BLOCK_N": block_n, "PAGED_TILE": paged, "FP8_CVT": cvt},
                         num_warps=8, num_stages=stages)


# The autotune spaces: the configs that won a grid point of the H200 sweep of 2026-12-02 (16/128
# heads x batch 1/32/128 x 4k/32k, benchmarks/README.md, MLA), nothing else, since every config
# compiles on first use. None spills (benchmarks/results/2026-12-02-sm90-mla_decode-ptxas.txt)
# except the 64-row fp8 one, whose spill-free alternatives were slower. 16-row blocks use
# mma.sync, 64-row blocks Hopper's warpgroup MMA. The faster 128-head variant (TMA loads, 2-10%
# at batch >= 32) is opt-in through `config`: its device-side descriptors need a process-wide
# `triton.set_allocator` hook. So is the e4m3 word path with the PTX converter (mla_tiles), untimed.
_BF16_CONFIGS = [
    _config(16, 64, 5),  # one block-table load per tile, two tile buffers: batch 1, 128 x 32k
    _config(16, 64, 2),  # the same single-buffered: batch 32 (as fast at 128 x 32k)
    _config(64, 32, 5),  # 128 heads from batch 1 x 32k up (batch 1 x 4k keeps 16-row blocks)
]
_FP8_CONFIGS = [  # Triton's e4m3 cast, one block-table load per row: the fastest fp8 measured
    _config(16, 64, 2, paged=False),
    _config(64, 32, 2, paged=False),  # 128 heads (spills 232 bytes of stack)
]
# Tile paths of a `config` that names none: those of the autotune spaces.
_DEFAULT_PATH = {False: dict(PAGED_TILE=True, FP8_CVT=0), True: dict(PAGED_TILE=False, FP8_CVT=0)}


def _prune(configs, named_args, **kwargs):
    rows = named_args["ROWS"] if "ROWS" in named_args else kwargs["ROWS"]
    # A head block larger than the rows only multiplies zeros; keep the smallest that covers them.
    fit = [c for c in configs if c.kwargs["BLOCK_H"] <= max(16, triton.next_power_of_2(rows))]
    return fit or configs[:1]


def _tuned(configs):
    return triton.autotune(configs=configs, key=["ROWS", "RANK", "PAGE", "DIRECT", "work_hint"],
                           prune_configs_by={"early_config_prune": _prune})(_mla_decode_part_kernel)


# One autotuner per cache dtype, each over its own space (FP8 is a constexpr of the kernel).
_mla_decode_part_bf16 = _tuned(_BF16_CONFIGS)
_mla_decode_part_fp8 = _tuned(_FP8_CONFIGS)


def _interpreting() -> bool:
    # Triton 3.9's interpreter multiplies bf16 dot operands as their raw uint16 storage; there the
    # kernel upcasts them to fp32 first (bf16 x bf16 products are exact in fp32, so the result is
    # the same up to summation order). Compiled kernels keep bf16 operands.
    return os.environ.get("TRITON_INTERPRET") == "1"


def _work_hint(programs_per_head_block: int) -> int:
    # Only an autotune key (the kernel ignores it): the best block shape for a launch of a few
    # programs (latency-bound) is not the best for thousands, and the H200 run showed a pick made
    # at batch 1 carried over to batch 128. Powers of two from 2 (Triton specialises the value 1).
    return max(2, min(256, triton.next_power_of_2(programs_per_head_block)))


def mla_decode_num_splits(batch: int, rows: int, max_seq_len: int, num_sms: int) -> int:
    """Splits per sequence so that batch x head-blocks x splits covers the GPU about four times.

    Depends on shapes only (never on device data), so the choice is CUDA-graph safe; each split
    keeps at least MIN_TOKENS_PER_SPLIT keys so the merge stays a small fraction of the work.
    """
    head_blocks = max(1, math.ceil(rows / 64))
    want = (4 * num_sms) // max(1, batch * head_blocks)
    cap = max(1, math.ceil(max_seq_len / MIN_TOKENS_PER_SPLIT))
    return max(1, min(want, cap, 64))


def mla_decode(q: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
               seq_lens: torch.Tensor, scale: float, kv_lora_rank: int = 512, *,
               k_scale: torch.Tensor | None = None, num_splits: int = 1,
               out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
               workspace: torch.Tensor | None = None,
               config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbed MLA decode over a paged latent cache.

    q [B, s_q, H, rank + rope] bf16/fp16 (absorbed nope part first, then rope); kv_cache
    [num_blocks, block_size, rank + rope] of q's dtype, float8_e4m3fn or uint8 (fp8 storage) with
    `k_scale` (fp32, one element); block_table [B, max_pages] int32; seq_lens [B] int32 (cached
    tokens including the s_q new ones). Returns out [B, s_q, H, rank] in q's dtype and lse
    [B, s_q, H] fp32 (natural log; -inf and out = 0 for a row that sees no key).
    `workspace`, if given, is fp32 with at least B * s_q * H * num_splits * (rank + 1) elements.
    `config` ({"BLOCK_H", "BLOCK_N"}, optionally "num_warps", "num_stages", "PAGED_TILE",
    "FP8_CVT" (mla_tiles) and "TMA") bypasses autotuning (the interpreter uses it). TMA builds
    tensor descriptors on the device, which needs `triton.set_allocator` (benchmarks only).
    """
    kv_cache = as_fp8_cache(kv_cache)
    batch, s_q, heads, dim = q.shape
    rope = dim - kv_lora_rank
    rows = s_q * heads
    fp8 = kv_cache.dtype == torch.float8_e4m3fn
    if kv_cache.dim() != 3 or kv_cache.shape[-1] != dim:
        raise ValueError(f"kv_cache: expected [blocks, block_size, {dim}], got {tuple(kv_cache.shape)}")
    if not fp8 and kv_cache.dtype != q.dtype:
        raise ValueError(f"kv_cache dtype {kv_cache.dtype} must be q's {q.dtype} or fp8 e4m3")
    if fp8 and (k_scale is None or k_scale.numel() != 1 or k_scale.dtype != torch.float32):
        raise ValueError("an fp8 kv_cache needs `k_scale`: an fp32 tensor of one element")
    if block_table.shape[0] != batch or seq_lens.shape != (batch,):
        raise ValueError(f"block_table {tuple(block_table.shape)} / seq_lens {tuple(seq_lens.shape)} "
                         f"do not match batch {batch}")
    if q.stride(-1) != 1 or q.stride(2) != dim or q.stride(1) != heads * dim:
        raise ValueError("q must be contiguous within each sequence: [B, s_q, H, D] with packed rows")
    if kv_cache.stride(-1) != 1 or block_table.stride(-1) != 1:
        raise ValueError("kv_cache and block_table need a contiguous last dimension")
    if rope <= 0 or kv_lora_rank & (kv_lora_rank - 1) or rope & (rope - 1):
        raise ValueError(f"kv_lora_rank {kv_lora_rank} and rope {rope} must be powers of two")
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    out = torch.empty(batch, s_q, heads, kv_lora_rank, dtype=q.dtype, device=q.device) if out is None else out
    lse = torch.empty(batch, s_q, heads, dtype=torch.float32, device=q.device) if lse is None else lse
    if batch == 0:
        return out, lse
    o2, lse2 = out.view(batch, rows, kv_lora_rank), lse.view(batch, rows)
    direct = num_splits == 1
    if direct:
        op = lp = o2  # unused by the kernel when DIRECT
        op_strides, lp_strides = (0, 0, 0), (0, 0)
    else:
        need = batch * rows * num_splits * (kv_lora_rank + 1)
        if workspace is None:
            workspace = torch.empty(need, dtype=torch.float32, device=q.device)
        elif workspace.numel() < need or workspace.dtype != torch.float32:
            raise ValueError(f"workspace: need {need} fp32 elements, got {workspace.numel()} {workspace.dtype}")
        split = batch * rows * num_splits * kv_lora_rank
        op = workspace[:split].view(batch, rows, num_splits, kv_lora_rank)
        lp = workspace[split:split + batch * rows * num_splits].view(batch, rows, num_splits)
        op_strides, lp_strides = op.stride()[:3], lp.stride()[:2]
    tuned = config is None
    # A fixed config's unnamed tile paths are the autotune spaces' for this cache dtype.
    config = {**_DEFAULT_PATH[fp8], **(config or {})}
    fp8_cvt = config["FP8_CVT"] if fp8 else 0
    if fp8_cvt == 4 and _interpreting():
        fp8_cvt = 2  # same words, converted without PTX
    if fp8_cvt in (2, 4) and (kv_cache.stride(0) % 4 or kv_cache.stride(1) % 4 or rope < 4):
        fp8_cvt = 0  # word modes read 4-byte aligned rows
    tma = bool(config.get("TMA", False))
    if tma and fp8 and fp8_cvt == 0:
        raise ValueError("config TMA on an fp8 cache needs a word mode (FP8_CVT 2 or 4)")
    if tma and (kv_cache.data_ptr() % 16 or (kv_cache.stride(1) * kv_cache.element_size()) % 16
                or kv_cache.shape[1] % config["BLOCK_N"]):
        raise ValueError("config TMA: the cache needs 16-byte aligned rows and pages a multiple of BLOCK_N")
    args = (q, kv_cache, block_table, seq_lens, k_scale if fp8 else lse, op, lp, o2, lse2,
            float(scale * LOG2E), q.stride(0), q.stride(2), kv_cache.stride(0), kv_cache.stride(1),
            block_table.stride(0), *op_strides, *lp_strides, o2.stride(0), o2.stride(1),
            lse2.stride(0), num_splits, _work_hint(batch * num_splits),
            kv_cache.shape[0] if tma else 0)  # only TMA reads it: no extra specialisations
    meta = dict(ROWS=rows, HEADS=heads, S_Q=s_q, RANK=kv_lora_rank, ROPE=rope,
                PAGE=kv_cache.shape[1], FP8=fp8, DIRECT=direct, DOT_F32=_interpreting())
    if tuned:  # the autotune configs carry PAGED_TILE and FP8_CVT themselves
        grid = lambda m: (triton.cdiv(rows, m["BLOCK_H"]), batch, num_splits)  # noqa: E731
        (_mla_decode_part_fp8 if fp8 else _mla_decode_part_bf16)[grid](*args, **meta)
    else:
        if "BLOCK_H" not in config or "BLOCK_N" not in config:
            raise ValueError(f"config needs BLOCK_H and BLOCK_N, got {sorted(config)}")
        grid = (triton.cdiv(rows, config["BLOCK_H"]), batch, num_splits)
        _mla_decode_part_kernel[grid](*args, **meta, BLOCK_H=config["BLOCK_H"],
                                      BLOCK_N=config["BLOCK_N"], PAGED_TILE=config["PAGED_TILE"],
                                      FP8_CVT=fp8_cvt, TMA=tma, num_warps=config.get("num_warps", 4),
                                      num_stages=config.get("num_stages", 2))
    if not direct:
        _mla_decode_merge_kernel[(batch, rows)](
            op, lp, o2, lse2, num_splits, *op_strides, *lp_strides, o2.stride(0), o2.stride(1),
            lse2.stride(0), ROWS=rows, RANK=kv_lora_rank, num_warps=4)
    return out, lse
