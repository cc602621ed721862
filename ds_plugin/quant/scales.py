"""Load-time checks every quant method here shares: each failure names the checkpoint tensor.

Pure torch (no vLLM), so the config and method modules can both use them without a cycle.
"""

from __future__ import annotations

import torch


def checked_loader(loader, name: str, expected: dict):
    """Wrap a weight loader so a checkpoint tensor of the wrong shape fails naming itself.

    `expected` maps the loader's shard id (None for a whole tensor) to the shape of the
    tensor as stored in the checkpoint. vLLM's loaders narrow what they are given, so an
    oversized tensor would otherwise load silently.
    """
    def load(param, loaded_weight, *args, **kwargs):
        # Linear loaders take (param, w, loaded_shard_id); expert loaders get shard_id=.
        shard = kwargs.get("shard_id", kwargs.get("loaded_shard_id", args[0] if args else None))
        want = expected.get(shard)
        if want is not None and tuple(loaded_weight.shape) != want:
            where = f" (shard {shard!r})" if shard is not None else ""
            raise ValueError(f"{name}: checkpoint tensor has shape {tuple(loaded_weight.shape)}"
                             f"{where}, expected {want}")
        try:
            return loader(param, loaded_weight, *args, **kwargs)
        except (AssertionError, RuntimeError) as e:
            raise ValueError(f"{name}: checkpoint tensor of shape {tuple(loaded_weight.shape)} "
                             f"does not fit parameter {tuple(param.shape)}: {e}") from e
    return load


def validate_scales(name: str, scale: torch.Tensor, want: tuple[int, ...]) -> None:
    """A scale grid must have the block shape, be loaded (no NaN poison), finite and > 0."""
    if tuple(scale.shape) != want:
        raise ValueError(f"{name}: shape {tuple(scale.shape)}, expected {want} "
                         f"(one fp32 scale per 128x128 weight block)")
    if scale.isnan().any():
        raise ValueError(f"{name}: missing from the checkpoint (or partly: "
                         f"{int(scale.isnan().sum())} of {scale.numel()} scales never loaded)")
    if not (scale.isfinite().all() and (scale > 0).all()):
        raise ValueError(f"{name}: scales must be finite and positive")
