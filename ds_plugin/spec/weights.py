"""The MTP layer's release tensors -> the draft model, with a load that names what is wrong.

The draft reads the same checkpoint as the target and takes only `model.layers.{N + k}.*`
(N = num_hidden_layers, k < num_nextn_predict_layers). Per MTP layer:

    enorm, hnorm, eh_proj, shared_head.norm   -> model.layers.{N+k}.<same>
    every decoder-layer tensor                -> model.layers.{N+k}.mtp_block.<same>, then
                                                 fused/stacked exactly as the target's
                                                 (ds_plugin.model.weights.checkpoint_plan)
    embed_tokens, shared_head.head            -> shape-checked, not loaded: vLLM aliases the
                                                 target's embedding and head into the draft

Every other tensor is the target's and is passed over. As for the target, the plan comes
from the model's own parameters, so before anything is kept the load can name a missing,
unexpected or mis-shaped tensor by its checkpoint name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from ds_plugin.model.config import DSConfig
from ds_plugin.model.weights import (Target, checkpoint_plan, expected_shape, load_tensor,
                                     self_checked, weight_block)

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
# The release's per-layer copies of the target's embedding and head.
_SHARED = ("embed_tokens.weight", "shared_head.head.weight")


def mtp_shape(rest: str, cfg: DSConfig) -> tuple[int, ...] | None:
    """Full shape of MTP-layer tensor `model.layers.{i}.<rest>` outside the decoder block."""
    h, v = cfg.hidden_size, cfg.vocab_size
    return {"enorm.weight": (h,), "hnorm.weight": (h,), "eh_proj.weight": (h, 2 * h),
            "shared_head.norm.weight": (h,), "embed_tokens.weight": (v, h),
            "shared_head.head.weight": (v, h)}.get(rest)


def mtp_plan(model: nn.Module, cfg: DSConfig) -> dict[str, list[Target]]:
    """Checkpoint tensor name -> targets in the draft (the `mtp_block.` level removed)."""
    return {name.replace(".mtp_block.", ".", 1): targets
            for name, targets in checkpoint_plan(model, cfg).items()}


def load_mtp_checkpoint(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
    """Load the MTP layer(s) of release-format `weights` into `model` (a DeepSeekMTP)."""
    cfg: DSConfig = model.cfg
    first, count = cfg.num_hidden_layers, model.model.num_layers
    plan = mtp_plan(model, cfg)
    block = weight_block(getattr(model, "quant_config", None))
    params = dict(model.named_parameters())
    seen: set[str] = set()
    loaded: set[str] = set()
    for name, tensor in weights:
        layer = _LAYER.match(name)
        if layer is None or int(layer.group(1)) < first:
            continue  # the target's tensors
        if name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from the config
        index, rest = int(layer.group(1)), layer.group(2)
        if index >= first + count:
            raise ValueError(f"checkpoint tensor {name!r} belongs to MTP layer {index}, but "
                             f"config.json has num_nextn_predict_layers={count} (MTP layers "
                             f"{first}..{first + count - 1})")
        if rest in _SHARED:
            want = mtp_shape(rest, cfg)
        else:
            targets = plan.get(name)
            if targets is None:
                raise ValueError(f"checkpoint tensor {name!r} (shape {tuple(tensor.shape)}) "
                                 "has no place in the DeepSeek MTP draft for this config")
            want = (None if self_checked(params[targets[0].param])
                    else mtp_shape(rest, cfg) or expected_shape(name, cfg, block))
        if want is not None and tuple(tensor.shape) != want:
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"expected {want} from config.json")
        if rest in _SHARED:
            continue  # vLLM serves the target's copy
        seen.add(name)
        for t in targets:
            if load_tensor(params[t.param], tensor, t, name):
                loaded.add(t.param)
    missing = sorted(set(plan) - seen)
    if missing and not seen:
        raise ValueError(f"speculative method 'mtp': the checkpoint has no MTP layer "
                         f"(model.layers.{first}.*, {len(missing)} tensors, e.g. "
                         f"{missing[0]}); serve without --speculative-config or use a "
                         "checkpoint that includes the MTP weights")
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"checkpoint lacks {len(missing)} MTP tensor(s) the draft needs: "
                         f"{', '.join(missing[:5])}{more}")
    return loaded
