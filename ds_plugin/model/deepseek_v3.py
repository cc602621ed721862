"""DeepSeek-V3 (and R1, V3-0324, V3.1: same architecture) for vLLM.

    h_0 = Embed(tokens)
    for each layer l:    h += MLA(RMSNorm(h));  h += FFN_l(RMSNorm(h))
                         FFN_l = dense SwiGLU for l < first_k_dense_replace, DeepSeekMoE after
    logits = LMHead(RMSNorm(h))

Tensor parallelism splits attention heads and MLP columns (vLLM's parallel linears); expert
parallelism is vLLM's MoE layer's. Quantization (block FP8, ...) is the quant_config's job:
this file only forwards it to the layers. The multi-token-prediction layer (index
`num_hidden_layers` in the checkpoint) is not part of this model; the loader skips it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from ds_plugin._vllm.layers import (LogitsProcessor, ParallelLMHead, RMSNorm,
                                     VocabParallelEmbedding, stated_config_fields,
                                     support_torch_compile)
from ds_plugin.model.config import DSConfig
from ds_plugin.model.mla import DeepseekV3MLA
from ds_plugin.model.moe import DeepseekV3MoE, DenseMLP
from ds_plugin.model.weights import load_checkpoint

log = logging.getLogger("vllm.ds_plugin")

# Printed once per model build by the process that builds it, the engine's worker: the
# serving test reads it from the server log to prove this class, not vLLM's, was built.
BUILD_LOG_LINE = "ds_plugin: building DeepseekV3ForCausalLM"


class DeepseekV3DecoderLayer(nn.Module):
    def __init__(self, cfg: DSConfig, vllm_config, layer_idx: int, prefix: str) -> None:
        super().__init__()
        quant = vllm_config.quant_config
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.self_attn = DeepseekV3MLA(cfg, vllm_config.cache_config, quant,
                                       prefix=f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        if cfg.is_moe_layer(layer_idx):
            self.mlp = DeepseekV3MoE(cfg, vllm_config.parallel_config, quant, prefix=f"{prefix}.mlp")
        else:
            self.mlp = DenseMLP(cfg.hidden_size, cfg.intermediate_size, quant, prefix=f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # vLLM's RMSNorm(x, residual) adds the residual and normalises in one pass and hands
        # back the sum as the next residual: pre-norm blocks without a separate add.
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


# Token count is the one dynamic dimension of every forward input (stated explicitly:
# vLLM cannot read it from the annotations, which are strings in this module).
@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": 0, "inputs_embeds": 0})
class DeepseekV3Model(nn.Module):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__()
        model_config = vllm_config.model_config
        cfg = DSConfig.from_hf(model_config.hf_config, stated_config_fields(model_config))
        self.cfg = cfg
        self.embed_tokens = VocabParallelEmbedding(
            cfg.vocab_size, cfg.hidden_size, quant_config=vllm_config.quant_config,
            prefix=f"{prefix}.embed_tokens")
        self.layers = nn.ModuleList(
            DeepseekV3DecoderLayer(cfg, vllm_config, i, prefix=f"{prefix}.layers.{i}")
            for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors=None, inputs_embeds: torch.Tensor | None = None
                ) -> torch.Tensor:
        hidden = inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class DeepseekV3ForCausalLM(nn.Module):
    # The quant config reads this (by reference, before the layers are built) to find the
    # checkpoint tensors behind each fused layer.
    packed_modules_mapping = {
        "gate_up_proj": ["gate_proj", "up_proj"],
        "fused_qkv_a_proj": ["q_a_proj", "kv_a_proj_with_mqa"],
    }

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__()
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise ValueError("ds_plugin DeepseekV3ForCausalLM: pipeline parallelism is not "
                             "supported; use tensor/expert parallelism")
        log.info("%s (%s.%s)", BUILD_LOG_LINE, type(self).__module__, type(self).__qualname__)
        self.quant_config = vllm_config.quant_config
        # Extra physical expert slots (EPLB); the loader copies each expert into all of its.
        self.num_redundant_experts = vllm_config.parallel_config.eplb_config.num_redundant_experts
        self.model = DeepseekV3Model(vllm_config=vllm_config, prefix=_join(prefix, "model"))
        self.cfg = self.model.cfg
        self.lm_head = ParallelLMHead(self.cfg.vocab_size, self.cfg.hidden_size,
                                        quant_config=self.quant_config,
                                        prefix=_join(prefix, "lm_head"))
        self.logits_processor = LogitsProcessor(self.cfg.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors=None, inputs_embeds: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_checkpoint(self, weights)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
