"""What tensor-parallel rank `r` of `tp` loads from a full (TP=1) checkpoint tensor, in torch.

Each function restates one vLLM 0.32 loader's narrowing, as the plugin's quant methods reach
it (their layers use the v1 `weight_loader`s: ds_fp8 / w4afp8 are not in vLLM's
WEIGHT_LOADER_V2_SUPPORTED list). tests/quant/test_tp_loading.py checks each against the real
vLLM layer loading the full tensor at (tp, r), bitwise; the kernel tests
(tests/kernels/test_tp_shards.py) use them where vLLM is not installed (the GPU machine).

- Column-parallel weight (ColumnParallelLinear.weight_loader): a parameter of N/tp rows, the
  rank's rows from r * N/tp. Its block scale (a BlockQuantScaleParameter, output_dim 0) is
  narrowed the same way with ITS OWN row count: ceil(N/tp / 128) rows from r * that.
- Merged column-parallel (MergedColumnParallelLinear.weight_loader, one checkpoint tensor
  per shard id): each part narrowed as a column-parallel weight (scale offset and size
  through adjust_block_scale_shard: ceil(size / 128)), the rank's parts concatenated.
- Row-parallel (RowParallelLinear.weight_loader): columns r * K/tp .. of the weight;
  ceil(K/tp / 128) scale columns from r * that.
- Routed experts (FusedMoE._load_w13 / _load_w2, per expert and projection): gate (w1) and up
  (w3) narrowed on their rows, down (w2) on its columns, each to `size // tp` from
  r * (size // tp), scales included (vLLM divides the scale grid as it is, no ceil).

The ceil only ever acts on a dimension TP does not split: at TP > 1 our methods refuse a
layer whose per-rank share is not whole 128-blocks (there vLLM's narrowing would hand a
rank another rank's scale rows), so every slice here starts on a block boundary.
"""

from __future__ import annotations

import torch

BLOCK = 128


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _narrow(t: torch.Tensor, dim: int, start: int, size: int) -> torch.Tensor:
    # vLLM copies the narrowed view into a fresh parameter: a contiguous tensor of its own.
    return t.narrow(dim, start, size).contiguous()


def column(w: torch.Tensor, s: torch.Tensor | None, tp: int, r: int):
    """(N, K) weight and its (ceil(N/128), ceil(K/128)) scales -> rank r's rows."""
    n = w.shape[0] // tp
    ws = _narrow(w, 0, r * n, n)
    if s is None:
        return ws, None
    sn = _ceil(n, BLOCK)
    return ws, _narrow(s, 0, r * sn, sn)


def merged(parts: list[tuple[torch.Tensor, torch.Tensor | None]], tp: int, r: int):
    """Checkpoint parts [(w_i (N_i, K), s_i)] (gate_proj, up_proj) -> rank r's merged weight."""
    shards = [column(w, s, tp, r) for w, s in parts]
    w = torch.cat([ws for ws, _ in shards])
    s = None if shards[0][1] is None else torch.cat([ss for _, ss in shards])
    return w, s


def row(w: torch.Tensor, s: torch.Tensor | None, tp: int, r: int):
    """(N, K) weight and its scales -> rank r's K columns (and scale columns)."""
    k = w.shape[1] // tp
    ws = _narrow(w, 1, r * k, k)
    if s is None:
        return ws, None
    sk = _ceil(k, BLOCK)
    return ws, _narrow(s, 1, r * sk, sk)


def _expert_dim(t: torch.Tensor, dim: int, tp: int, r: int) -> torch.Tensor:
    per_rank = t.shape[dim] // tp
    return _narrow(t, dim, r * per_rank, per_rank)


def experts_w13(w13: torch.Tensor, tp: int, r: int) -> torch.Tensor:
    """Stacked (E, 2X, ...) gate rows then up rows (weights, packed weights or any scale grid
    of them) -> rank r's (E, 2X/tp, ...): its gate rows, then its up rows."""
    gate, up = w13.chunk(2, dim=1)
    return torch.cat([_expert_dim(gate, 1, tp, r), _expert_dim(up, 1, tp, r)], dim=1)


def experts_w2(w2: torch.Tensor, tp: int, r: int) -> torch.Tensor:
    """Stacked (E, H, X) down weights (or packed weights, or scales) -> rank r's X columns."""
    return _expert_dim(w2, 2, tp, r)


def heads(q: torch.Tensor, tp: int, r: int, dim: int = 2) -> torch.Tensor:
    """Rank r's query heads (MLA: num_heads // tp consecutive heads per rank)."""
    return _expert_dim(q, dim, tp, r)
