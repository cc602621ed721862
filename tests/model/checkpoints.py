"""The tiny checkpoints the model tests serve, and how they are made well-conditioned.

Three configs cover the variants the model decides from config fields: a plain q
projection (`q_lora_rank: null`), ungrouped routing (`n_group: 1`, two MoE layers), and the
release's YaRN `rope_scaling` with grouped routing (4 groups, 2 kept, top-4 of 16).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ds_plugin.testing.checkpoint import TinyConfig, write_checkpoint

# logit_peak: a token -> next-token map in lm_head, so greedy steps have margins of several
# logits instead of bf16 near-ties (the layers still move the logits by O(1)).
PEAK = 1.0
# The generator's router is as flat as an untrained one (scores 0.5 ± 0.05), so most
# tokens' expert choice is a bf16 coin flip; scaling the gate spreads scores over (0, 1)
# like a trained router's, leaving few near-ties for the comparisons to exclude.
ROUTER_GAIN = 8.0

CONFIGS: dict[str, TinyConfig] = {
    "q_lora_null": TinyConfig(q_lora_rank=None, rope_scaling=None, logit_peak=PEAK),
    "n_group_1": TinyConfig(n_group=1, topk_group=1, num_hidden_layers=3,
                            first_k_dense_replace=1, rope_scaling=None, logit_peak=PEAK),
    "yarn": TinyConfig(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4,
                       logit_peak=PEAK),
}


def make(out_dir: Path, name: str, quant: str = "bf16") -> Path:
    """Write config `name` (quant "bf16" or "fp8") with a trained-like router spread."""
    path = write_checkpoint(out_dir / f"{name}-{quant}", CONFIGS[name], quant=quant, seed=0)
    _scale_router(path, ROUTER_GAIN)
    return path


def _scale_router(path: Path, gain: float) -> None:
    from safetensors.torch import load_file, save_file

    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = {s for n, s in index["weight_map"].items() if n.endswith("mlp.gate.weight")}
    for shard in shards:
        tensors = load_file(str(path / shard))
        for name in tensors:
            if name.endswith("mlp.gate.weight"):
                tensors[name] = (tensors[name].float() * gain).to(tensors[name].dtype)
        save_file(tensors, str(path / shard), metadata={"format": "pt"})


def prompts(n: int = 3, seed: int = 1) -> list[list[int]]:
    """Random token ids of ragged lengths (7, 13, 20, ...), away from special tokens."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(100, 120000, (7 + 6 * i + (i > 1),), generator=g).tolist()
            for i in range(n)]
