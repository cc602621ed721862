"""The int4 weight format of W4AFP8 checkpoints: the one owner of its numbers and codec.

- Values: signed int4, two's complement, [-8, 7]. Every one is exact in e4m3 (fp8_format), so
  a kernel can expand them to FP8 and run FP8 MMAs against FP8 activations.
- Packing: `weight` int8 (N, K/2), two values per byte along K: element 2j in the LOW nibble
  of byte j, element 2j+1 in the HIGH nibble (little-endian nibble order, so the nibbles of
  a 32-bit word are 8 consecutive elements).
- Scales: `weight_scale_inv` fp32 (N, K/GROUP), one multiplier per row per GROUP consecutive
  K elements: w = int4 * scale. Expert stacks add a leading dim. K is a whole number of
  groups (so TP may split K only at group boundaries).
- Activations are FP8 with either a static per-tensor scale (the checkpoint's
  `input_scale`) or dynamic per-token groups of 128 (fp8_format's).
- Kernel layout (what the CUDA kernels read; `to_kernel_layout`, done once at load): each
  32-bit word of 8 values has bytes 1 and 2 swapped and every nibble stored offset-binary
  (v + 8, i.e. XOR 8). Lanes of a word then split into (v0, v2), (v1, v3), (v4, v6),
  (v5, v7) with one mask each, which is what the kernel's fp16 expansion wants.
- Tiled kernel layout (`to_tiles`, on top of the kernel layout, optional): the 64-byte
  pieces (one row's 128-value group) reordered so that each block of TILE_ROWS rows stores
  group 0 of its rows, then group 1, ...: a GEMM program's K step then reads whole
  contiguous 4 KB tiles instead of 64 bytes from each of 64 rows.

Pure torch, production code (checkpoint generator, CPU dequantizing path, references).
"""

from __future__ import annotations

import torch

from ds_plugin.kernels.fp8_format import FP8, round_scale_ue8m0

GROUP = 128
TILE_ROWS = 64
INT4_MIN, INT4_MAX = -8, 7


def pack_int4(v: torch.Tensor) -> torch.Tensor:
    """(..., K) integer values in [-8, 7], K even -> (..., K/2) int8 (low nibble = even k)."""
    if v.shape[-1] % 2:
        raise ValueError(f"pack_int4: K must be even, got shape {tuple(v.shape)}")
    if v.numel() and (int(v.min()) < INT4_MIN or int(v.max()) > INT4_MAX):
        raise ValueError(f"pack_int4: values outside [{INT4_MIN}, {INT4_MAX}]")
    u = v.to(torch.int16) & 0xF
    return (u[..., 0::2] | (u[..., 1::2] << 4)).to(torch.uint8).view(torch.int8)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """(..., K/2) int8 -> (..., K) int8 in [-8, 7]; the inverse of pack_int4."""
    if p.dtype != torch.int8:
        raise ValueError(f"unpack_int4: packed weights are int8, got {p.dtype}")
    b = p.to(torch.int16)
    lo = ((b & 0xF) ^ 8) - 8          # sign-extend the low nibble
    hi = b >> 4                       # arithmetic shift sign-extends the high one
    return torch.stack((lo, hi), dim=-1).flatten(-2).to(torch.int8)


def group_grid(shape: tuple[int, ...], group: int = GROUP) -> tuple[int, ...]:
    """Scale grid of an unpacked weight shape (..., N, K): (..., N, K/group)."""
    *lead, n, k = shape
    if k % group:
        raise ValueError(f"int4 weight K={k} is not a multiple of the group size {group}")
    return (*lead, n, k // group)


def dequant_int4(p: torch.Tensor, s: torch.Tensor, dtype: torch.dtype = torch.float32,
                 group: int = GROUP) -> torch.Tensor:
    """(..., N, K/2) packed int8 with (..., N, K/group) fp32 scales -> (..., N, K) dtype.

    Multiplies in fp32 and rounds once to `dtype`.
    """
    *lead, n, kp = p.shape
    want = group_grid((*lead, n, 2 * kp), group)
    if tuple(s.shape) != want:
        raise ValueError(f"int4 scale grid {tuple(s.shape)} does not fit packed weight "
                         f"{tuple(p.shape)}: expected {want} (one scale per {group} K values)")
    v = unpack_int4(p).float().view(*lead, n, kp * 2 // group, group)
    return (v * s.float()[..., None]).view(*lead, n, 2 * kp).to(dtype)


def quant_int4(w: torch.Tensor, group: int = GROUP, pow2: bool = False):
    """(..., N, K) float -> (packed (..., N, K/2) int8, scales (..., N, K/group) fp32).

    Symmetric per group: scale = amax / 7 (rounded up to a power of two with `pow2`, so
    int4 x scale is exact in bf16 and a checkpoint has an exact bf16 twin); values round to
    nearest and clamp to [-8, 7].
    """
    *lead, n, k = w.shape
    grid = group_grid(tuple(w.shape), group)
    wg = w.float().reshape(*lead, n, grid[-1], group)
    amax = wg.abs().amax(dim=-1).clamp_min(1e-12)
    s = amax / INT4_MAX
    if pow2:
        s = round_scale_ue8m0(s)
    v = torch.round(wg / s[..., None]).clamp(INT4_MIN, INT4_MAX).to(torch.int8)
    return pack_int4(v.reshape(*lead, n, k)), s.contiguous()


def to_kernel_layout(p: torch.Tensor) -> torch.Tensor:
    """Checkpoint-packed (..., K/2) int8 -> the kernels' layout, same shape and dtype.

    A byte permutation plus XOR, its own inverse (`from_kernel_layout` is the same map).
    Expert stacks may be converted one expert at a time to bound the temporary.
    """
    if p.dtype != torch.int8 or p.shape[-1] % 4:
        raise ValueError(f"to_kernel_layout: int8 with K/2 a multiple of 4, got "
                         f"{p.dtype} {tuple(p.shape)}")
    b = p.view(torch.uint8).unflatten(-1, (-1, 4))
    return (b[..., [0, 2, 1, 3]] ^ 0x88).flatten(-2).view(torch.int8)


from_kernel_layout = to_kernel_layout


def _tile_view(p: torch.Tensor, who: str) -> torch.Tensor:
    *lead, n, kp = p.shape
    if p.dtype != torch.int8 or n % TILE_ROWS or (2 * kp) % GROUP:
        raise ValueError(f"{who}: int8 (..., N, K/2) with N a multiple of {TILE_ROWS} and K "
                         f"of {GROUP}, got {p.dtype} {tuple(p.shape)}")
    return p.reshape(*lead, n // TILE_ROWS, TILE_ROWS, 2 * kp // GROUP, GROUP // 2)


def to_tiles(p: torch.Tensor) -> torch.Tensor:
    """(..., N, K/2) int8 -> the tiled layout, same shape: byte (n, 64g + b) moves to row
    block n // 64, group g, row n % 64, byte b. Rows and groups only move, so it applies on
    top of to_kernel_layout (either order)."""
    return _tile_view(p, "to_tiles").transpose(-3, -2).reshape(p.shape).contiguous()


def from_tiles(p: torch.Tensor) -> torch.Tensor:
    """The inverse of to_tiles."""
    *lead, n, kp = p.shape
    t = _tile_view(p, "from_tiles").reshape(*lead, n // TILE_ROWS, 2 * kp // GROUP, TILE_ROWS,
                                             GROUP // 2)
    return t.transpose(-3, -2).reshape(p.shape).contiguous()


def e4m3_codes() -> list[int]:
    """The e4m3 byte of each int4 value -8..7, from torch's own cast (the kernels' tables)."""
    return torch.arange(INT4_MIN, INT4_MAX + 1, dtype=torch.float32).to(FP8).view(
        torch.uint8).tolist()
