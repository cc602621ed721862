"""Load-time checks every quant method here shares: each failure names the checkpoint tensor.

Pure torch (no vLLM), so the config and method modules can both use them without a cycle.
"""

from __future__ import annotations

import torch


# Checkpoint dtypes of block-FP8 tensors: (accepted, what the error asks for). DeepSeek ships
# fp32 scales; a bf16 scale converts to the fp32 parameter exactly, so it is taken (logged
# once). Anything else (an integer or fp8 scale, a bf16 weight in an fp8 layer) the loader's
# copy_ would convert silently into wrong values, so it stops the load naming the tensor.
FP8_WEIGHT = ((torch.float8_e4m3fn,), "float8_e4m3fn")
FP32_SCALE = ((torch.float32, torch.bfloat16), "float32 (bfloat16 is upcast exactly)")


def checked_loader(loader, name: str, expected: dict, dtypes=None, note=None):
    """Wrap a weight loader so a checkpoint tensor of the wrong shape or dtype fails
    naming itself.

    `expected` maps the loader's shard id (None for a whole tensor) to the shape of the
    tensor as stored in the checkpoint. vLLM's loaders narrow what they are given, so an
    oversized tensor would otherwise load silently; they also copy_ into the parameter,
    which converts any dtype. `dtypes` (FP8_WEIGHT, FP32_SCALE) says which dtypes are taken;
    `note(message)` is told once per dtype taken that is not the parameter's own.
    """
    def load(param, loaded_weight, *args, **kwargs):
        if dtypes is not None:
            accepted, want = dtypes
            got = str(loaded_weight.dtype).removeprefix("torch.")
            if loaded_weight.dtype not in accepted:
                raise ValueError(f"{name}: checkpoint tensor has dtype {got}, expected {want}")
            if loaded_weight.dtype != param.dtype and note is not None:
                note(f"{got} {name.rsplit('.', 1)[-1]} tensors are upcast to "
                     f"{str(param.dtype).removeprefix('torch.')} (exact)")
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


def validate_scales(name: str, scale: torch.Tensor, want: tuple[int, ...],
                    what: str = "one fp32 scale per 128x128 weight block") -> None:
    """A scale grid must have its layout's shape, be loaded (no NaN poison), finite and > 0."""
    if tuple(scale.shape) != want:
        raise ValueError(f"{name}: shape {tuple(scale.shape)}, expected {want} ({what})")
    if scale.isnan().any():
        raise ValueError(f"{name}: missing from the checkpoint (or partly: "
                         f"{int(scale.isnan().sum())} of {scale.numel()} scales never loaded)")
    if not (scale.isfinite().all() and (scale > 0).all()):
        raise ValueError(f"{name}: scales must be finite and positive")
