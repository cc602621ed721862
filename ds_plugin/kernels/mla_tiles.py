"""Device helpers of the MLA decode kernel (mla_decode.py): a cache tile -> MMA operands -> one
online-softmax step.

How an e4m3 tile becomes the fp16 MMA operand (`FP8_CVT`):
- 0: Triton's own cast. Its PTX uses the hardware pair converter, but Triton 3.6 first moves the
  raw bytes into the MMA operand layout through shared memory one byte at a time
  (`ld.shared.b8`, 128 a thread per 64-token tile; results/2026-12-02-sm90-mla_decode-ptxas.txt).
  The fastest fp8 path on the H200 (2026-12-02) all the same, so the default.
- 4: the cache read as int32 words of four codes (pipelined cp.async, 16-byte vectors) and each
  word converted in registers by the hardware pair converter (`cvt.rn.f16x2.e4m3x2`, inline PTX).
  GPU only. Not yet timed on a GPU: a benchmark column, not a default.
- 2: the same words converted by integer ops (about 1.5x the SASS of mode 4): the interpreter's
  stand-in for 4, and the converter that lost to mode 0 on the H200.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _e4m3_pair_to_f16x2(w):
    """Two e4m3 codes (bits 0-7 and 8-15 of int32 `w`) -> two fp16 holding each value * 2^-8.

    e4m3 (bias 7) placed in fp16's exponent/mantissa fields (bias 15) reads as the same value
    times 2^-8, subnormals included, so the convert is exact integer work in registers; the
    2^8 goes into the scale. The codes the cache writer emits never include e4m3's NaN.
    """
    pair = ((w & 0x7F) << 7) | ((w & 0x80) << 8) | ((w & 0x7F00) << 15) | ((w & 0x8000) << 16)
    lo = (pair & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
    hi = ((pair >> 16) & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
    return lo, hi


@triton.jit
def _e4m3x4_to_f16(w):
    """int32 words of four e4m3 codes -> four fp16 tensors (bytes 0..3), by the hardware pair
    converter (sm_89+): two instructions a word. GPU only (the interpreter runs no PTX)."""
    return tl.inline_asm_elementwise(
        asm="{ .reg .b16 lo, hi; .reg .b32 a, b; mov.b32 {lo, hi}, $4; "
            "cvt.rn.f16x2.e4m3x2 a, lo; cvt.rn.f16x2.e4m3x2 b, hi; "
            "mov.b32 {$0, $1}, a; mov.b32 {$2, $3}, b; }",
        constraints="=h,=h,=h,=h,r", args=[w],
        dtype=(tl.float16, tl.float16, tl.float16, tl.float16), is_pure=True, pack=1)


@triton.jit
def convert_tile(x, FP8_CVT: tl.constexpr, WIDTH: tl.constexpr, BLOCK_N: tl.constexpr):
    """A loaded cache tile -> the MMA operand: as loaded for FP8_CVT 0 (bf16, or e4m3 that the
    caller casts), else int32 words -> [BLOCK_N, WIDTH] fp16 in column order."""
    if FP8_CVT == 4:
        c0, c1, c2, c3 = _e4m3x4_to_f16(x)
        x = tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), [BLOCK_N, WIDTH])
    elif FP8_CVT == 2:
        w = x.to(tl.uint32, bitcast=True)
        c0, c1 = _e4m3_pair_to_f16x2(w)
        c2, c3 = _e4m3_pair_to_f16x2(w >> 16)
        x = tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), [BLOCK_N, WIDTH])
    return x


@triton.jit
def load_tile(kv_row, offs, n_ok, FP8_CVT: tl.constexpr, WIDTH: tl.constexpr, BLOCK_N: tl.constexpr):
    """A masked [BLOCK_N, WIDTH] operand from cache rows at `kv_row` + column offsets `offs` (in
    int32 words for the word modes, where `kv_row` is an int32 pointer)."""
    x = tl.load(kv_row[:, None] + offs[None, :], mask=n_ok[:, None], other=0.0)
    return convert_tile(x, FP8_CVT, WIDTH, BLOCK_N)


@triton.jit
def attend(q_c, q_r, k_c, k_r, n, row_end, qk_scale, m, l, acc, FP8: tl.constexpr, OUT_TY: tl.constexpr):
    """One key tile of the online softmax: returns the updated (row max, row sum, accumulator)."""
    s = tl.dot(q_r, tl.trans(k_r), tl.dot(q_c, tl.trans(k_c)))
    s = tl.where(n[None, :] < row_end[:, None], s * qk_scale, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    # A row that has seen no visible key yet keeps m = -inf; shift by 0 to avoid inf - inf.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l = l * alpha + tl.sum(p, 1)
    if FP8:
        p_mm = p.to(k_c.dtype)
    else:
        p_mm = p.to(OUT_TY).to(k_c.dtype)
    acc = acc * alpha[:, None] + tl.dot(p_mm, k_c)
    return m_new, l, acc

