"""The fp32 reference: HF transformers' DeepseekV3ForCausalLM on a checkpoint's weights.

FP8 checkpoints are dequantized (weight · scale_inv, blockwise, fp32) before loading, so the
reference is the model the FP8 weights stand for. The MTP layer is dropped: transformers'
model, like ours, is the target model only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ds_plugin.testing.checkpoint import read_state_dict

_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")


def _hf_state_dict(release: dict[str, torch.Tensor], n_layers: int,
                   n_experts: int) -> dict[str, torch.Tensor]:
    """Release names -> transformers 5 names (experts stacked as 3D gate_up / down)."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, t in release.items():
        layer = re.match(r"^model\.layers\.(\d+)\.", name)
        if layer and int(layer.group(1)) >= n_layers:
            continue
        m = _EXPERT.match(name)
        if m:
            experts.setdefault(m.group(1), {}).setdefault(m.group(3), {})[int(m.group(2))] = t
        else:
            out[name] = t
    for prefix, parts in experts.items():
        gate = torch.stack([parts["gate"][e] for e in range(n_experts)])
        up = torch.stack([parts["up"][e] for e in range(n_experts)])
        out[f"{prefix}.gate_up_proj"] = torch.cat([gate, up], dim=1)
        out[f"{prefix}.down_proj"] = torch.stack([parts["down"][e] for e in range(n_experts)])
    return out


def load_reference(path: str | Path):
    """An fp32, eval-mode transformers DeepseekV3ForCausalLM holding the checkpoint."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    raw = json.loads((Path(path) / "config.json").read_text())
    raw.pop("quantization_config", None)
    cfg = DeepseekV3Config(**raw)
    cfg._attn_implementation = "eager"
    with torch.device("cpu"):
        model = DeepseekV3ForCausalLM(cfg).float().eval()
    sd = _hf_state_dict(read_state_dict(path, dequantize=True), cfg.num_hidden_layers,
                        cfg.n_routed_experts)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # Buffers transformers recomputes (rotary inv_freq) are the only tolerated gaps.
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise KeyError(f"reference load: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


@torch.no_grad()
def prompt_logits(model, ids: list[int]) -> torch.Tensor:
    """fp32 logits, row i = distribution after token i."""
    return model(torch.tensor([ids])).logits[0].float()


@torch.no_grad()
def greedy(model, ids: list[int], steps: int) -> tuple[list[int], list[float]]:
    """Greedy continuation and, per step, the fp32 margin between the top two logits."""
    seq = list(ids)
    tokens, margins = [], []
    for _ in range(steps):
        logits = model(torch.tensor([seq])).logits[0, -1].float()
        top2 = logits.topk(2)
        tokens.append(int(top2.indices[0]))
        margins.append(float(top2.values[0] - top2.values[1]))
        seq.append(tokens[-1])
    return tokens, margins
