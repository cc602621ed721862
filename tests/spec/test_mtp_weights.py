"""The MTP draft's loader on a real, in-process DeepSeekMTP (TP=1, no engine).

The MTP layer's release tensors land in the draft bit for bit (decoder tensors fused and
stacked as the target's), the target's tensors are passed over, the release's copies of the
embedding and head are shape-checked but not kept (vLLM aliases the target's), and a missing,
mis-shaped or unexpected MTP tensor stops the load with its name.
"""

from __future__ import annotations

import pytest
import torch

from ds_plugin.testing.checkpoint import TinyConfig, read_state_dict, write_checkpoint

MTP = "model.layers.2."


def _config(path):
    from tests.helpers.vllm_api import EngineArgs

    return EngineArgs(model=str(path), skip_tokenizer_init=True, enforce_eager=True,
                      max_model_len=512, gpu_memory_utilization=0.15,
                      speculative_config={"method": "mtp", "num_speculative_tokens": 3}
                      ).create_engine_config()


def _build(cfg):
    from ds_plugin.spec.mtp import DeepSeekMTP
    from tests.helpers.vllm_api import set_current_vllm_config
    from tests.helpers.vllm_probe import single_rank_context

    # Layers register by name in the config; a new model on the same config starts afresh.
    cfg.compilation_config.static_forward_context.clear()
    with single_rank_context(), set_current_vllm_config(cfg):
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            return DeepSeekMTP(vllm_config=cfg)
        finally:
            torch.set_default_dtype(default)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("mtp-weights") / "tiny", TinyConfig())
    # One VllmConfig for the module (building it starts vLLM's registry subprocesses); a
    # fresh model per load.
    return _config(path), read_state_dict(path, dequantize=False)


def _load(ckpt, tensors):
    model = _build(ckpt[0])
    return model, model.load_weights(iter(tensors.items()))


def test_mtp_layer_lands_bitwise_and_target_tensors_pass_over(ckpt):
    _, sd = ckpt
    model, loaded = _load(ckpt, sd)
    p = dict(model.named_parameters())
    assert loaded == set(p)
    for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight"):
        assert torch.equal(p[MTP + name], sd[MTP + name]), name
    block = MTP + "mtp_block."
    q_rank = model.cfg.q_lora_rank
    fused = p[block + "self_attn.fused_qkv_a_proj.weight"]
    assert torch.equal(fused[:q_rank], sd[MTP + "self_attn.q_a_proj.weight"])
    assert torch.equal(fused[q_rank:], sd[MTP + "self_attn.kv_a_proj_with_mqa.weight"])
    inter = model.cfg.moe_intermediate_size
    for e in (0, 7):
        w13 = p[block + "mlp.experts.routed_experts.w13_weight"][e]
        assert torch.equal(w13[inter:], sd[f"{MTP}mlp.experts.{e}.up_proj.weight"])
    bias = p[block + "mlp.gate.e_score_correction_bias"]
    assert bias.dtype == torch.float32
    assert torch.equal(bias, sd[MTP + "mlp.gate.e_score_correction_bias"])
    # Nothing of the target (layers 0-1, its norm, embedding, head) is in the draft, and the
    # draft holds no embedding or head of its own until vLLM aliases the target's.
    assert all(n.startswith(MTP) for n in p)
    assert model.model.embed_tokens is None
    assert model.model.layer(0).shared_head.head is None


def test_spec_step_picks_the_layer_modulo_their_number(ckpt):
    model = _build(ckpt[0])
    layer = model.model.layers["2"]
    assert all(model.model.layer(s) is layer for s in range(4))


@pytest.mark.parametrize("victim", [MTP + "eh_proj.weight", MTP + "enorm.weight",
                                    MTP + "mlp.experts.3.up_proj.weight",
                                    MTP + "self_attn.kv_b_proj.weight"])
def test_missing_tensor_named(ckpt, victim):
    _, sd = ckpt
    with pytest.raises(ValueError, match=f"lacks 1 MTP tensor.*{victim}"):
        _load(ckpt, {k: v for k, v in sd.items() if k != victim})


@pytest.mark.parametrize("victim", [MTP + "eh_proj.weight", MTP + "shared_head.head.weight",
                                    MTP + "embed_tokens.weight", MTP + "self_attn.q_b_proj.weight"])
def test_misshaped_tensor_named(ckpt, victim):
    _, sd = ckpt
    bad = {**sd, victim: torch.cat([sd[victim], sd[victim][:1]])}
    with pytest.raises(ValueError, match=f"{victim}.*has shape"):
        _load(ckpt, bad)


def test_checkpoint_without_mtp_layer_says_so(ckpt):
    _, sd = ckpt
    with pytest.raises(ValueError, match="has no MTP layer.*model.layers.2"):
        _load(ckpt, {k: v for k, v in sd.items() if not k.startswith(MTP)})


def test_extra_mtp_layer_named(ckpt):
    _, sd = ckpt
    name = "model.layers.3.enorm.weight"
    with pytest.raises(ValueError, match=f"{name}.*num_nextn_predict_layers=1"):
        _load(ckpt, {**sd, name: sd[MTP + "enorm.weight"]})
