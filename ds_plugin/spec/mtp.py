"""DeepSeek-V3 multi-token prediction (V3 paper §2.2) as vLLM's MTP draft model.

One MTP layer k (checkpoint index num_hidden_layers + k) predicts one token further ahead
than what feeds it. For the token at position i, with h the hidden state of the depth
before (the target model's final hidden state for k = 0) and t the next token:

    x   = eh_proj( enorm(Embed(t)) ‖ hnorm(h) )        [2H] -> [H], Embed zeroed at i = 0
    y   = DecoderLayer(x)                              our DeepseekV3DecoderLayer (MLA + MoE)
    logits(t + 1) = Head(shared_head.norm(y))

The contract with vLLM's proposer (V1 `llm_base_proposer`, V2 `MTPSpeculator`): `forward`
takes the target's hidden states as `hidden_states` and returns the tuple (y, norm(y)):
y for `compute_logits`, norm(y) fed back as h for the next draft step, since vLLM decides
from the architecture name "DeepSeekMTPModel" that this model returns a tuple. The embedding
and the head are the target's: both runners alias the target's `model.embed_tokens` and
`lm_head` into `model.embed_tokens` and every layer's `shared_head.head` after loading, so
this model allocates neither (the release's copies are identical; the loader checks their
shapes and skips them). With more draft steps than MTP layers, `spec_step_idx` picks the layer
modulo their number: the one layer DeepSeek ships drafts every step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from ds_plugin._vllm.layers import LogitsProcessor, RMSNorm, support_torch_compile
from ds_plugin.model.config import DSConfig
from ds_plugin.model.deepseek_v3 import DeepseekV3DecoderLayer
from ds_plugin.spec.weights import load_mtp_checkpoint

log = logging.getLogger("vllm.ds_plugin")

# Printed once per draft build by the worker that builds it (tests read it from the log).
BUILD_LOG_LINE = "ds_plugin: building DeepSeekMTP"


class SharedHead(nn.Module):
    """The final norm of an MTP layer; `head` is the target's LM head, set by vLLM."""

    def __init__(self, cfg: DSConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        # A plain attribute until vLLM's proposer replaces it with the target's head; the
        # proposer only rebinds a `head` that exists.
        self.head = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden)


class MTPLayer(nn.Module):
    def __init__(self, cfg: DSConfig, vllm_config, layer_idx: int, prefix: str) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.enorm = RMSNorm(h, eps=cfg.rms_norm_eps)
        self.hnorm = RMSNorm(h, eps=cfg.rms_norm_eps)
        # Unquantised in every release (bf16 even in the FP8 checkpoints) and small:
        # every tensor-parallel rank keeps the whole projection.
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.shared_head = SharedHead(cfg)
        # The target's decoder layer, under the checkpoint's own layer prefix so attention
        # and MoE register as layer `layer_idx` (distinct from the target's layers).
        self.mtp_block = DeepseekV3DecoderLayer(cfg, vllm_config, layer_idx, prefix)

    def forward(self, positions: torch.Tensor, embeds: torch.Tensor,
                previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Position 0 has no earlier token for the drafted prediction to condition on; the
        # reference recipe (and vLLM's in-tree draft) feeds it a zero embedding.
        embeds = torch.where(positions.unsqueeze(-1) == 0, 0, embeds)
        x = self.eh_proj(torch.cat([self.enorm(embeds), self.hnorm(previous)], dim=-1))
        out, residual = self.mtp_block(positions, x, None)
        hidden = out + residual
        return hidden, self.shared_head(hidden)


class DeepSeekMTPModel(nn.Module):
    def __init__(self, cfg: DSConfig, vllm_config, prefix: str) -> None:
        super().__init__()
        self.start = cfg.num_hidden_layers
        self.num_layers = _num_mtp_layers(vllm_config)
        # Keyed by checkpoint layer index, as vLLM's proposer walks `layers` for shared_head.
        self.layers = nn.ModuleDict({
            str(i): MTPLayer(cfg, vllm_config, i, f"{prefix}.layers.{i}")
            for i in range(self.start, self.start + self.num_layers)})
        # The target's embedding, aliased in by vLLM after loading (see module docstring).
        self.embed_tokens = None

    def layer(self, spec_step_idx: int) -> MTPLayer:
        return self.layers[str(self.start + spec_step_idx % self.num_layers)]


@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": 0, "hidden_states": 0,
                                         "inputs_embeds": 0})
class DeepSeekMTP(nn.Module):
    """What vLLM builds for architecture "DeepSeekMTPModel" (`speculative_config.method: mtp`)."""

    packed_modules_mapping = {
        "gate_up_proj": ["gate_proj", "up_proj"],
        "fused_qkv_a_proj": ["q_a_proj", "kv_a_proj_with_mqa"],
    }

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__()
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise ValueError("ds_plugin DeepSeekMTP: pipeline parallelism is not supported; "
                             "use tensor/expert parallelism")
        log.info("%s (%s.%s)", BUILD_LOG_LINE, type(self).__module__, type(self).__qualname__)
        self.cfg = DSConfig.from_hf(_draft_hf_config(vllm_config))
        self.quant_config = vllm_config.quant_config
        self.num_redundant_experts = vllm_config.parallel_config.eplb_config.num_redundant_experts
        self.model = DeepSeekMTPModel(self.cfg, vllm_config, prefix=_join(prefix, "model"))
        self.logits_processor = LogitsProcessor(self.cfg.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                hidden_states: torch.Tensor | None = None, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None, spec_step_idx: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # vLLM's model protocol has no hidden_states; its MTP proposers always pass them.
        if hidden_states is None:
            raise ValueError("DeepSeekMTP.forward needs the target's hidden_states (it is "
                             "called by vLLM's speculative proposer)")
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        return self.model.layer(spec_step_idx)(positions, inputs_embeds, hidden_states)

    def compute_logits(self, hidden_states: torch.Tensor,
                       spec_step_idx: int = 0) -> torch.Tensor | None:
        head = self.model.layer(spec_step_idx).shared_head
        return self.logits_processor(head.head, head(hidden_states))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_mtp_checkpoint(self, weights)


def _draft_hf_config(vllm_config):
    # The proposer builds the draft under the target's VllmConfig; the draft's own config
    # (model_type deepseek_mtp, architectures DeepSeekMTPModel) is the speculative config's.
    spec = vllm_config.speculative_config
    if spec is None or spec.draft_model_config is None:
        raise ValueError("ds_plugin DeepSeekMTP is a speculative draft model: serve the "
                         "target with --speculative-config '{\"method\": \"mtp\", ...}'")
    return spec.draft_model_config.hf_config


def _num_mtp_layers(vllm_config) -> int:
    hf = _draft_hf_config(vllm_config)
    n = int(getattr(hf, "num_nextn_predict_layers", 0) or 0)
    if n < 1:
        raise ValueError("speculative method 'mtp' needs MTP layers, but config.json has "
                         f"num_nextn_predict_layers={n}")
    return n


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
