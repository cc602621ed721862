"""DSConfig: variants from config fields, the YaRN softmax scale, and clear refusals."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from ds_plugin.model.config import DSConfig
from ds_plugin.testing.checkpoint import TinyConfig


def _hf(**overrides):
    from transformers import DeepseekV3Config

    raw = TinyConfig().hf_config()
    raw.update(overrides)
    return DeepseekV3Config(**raw)


def test_release_like_config_reads_as_written():
    cfg = DSConfig.from_hf(_hf())
    t = TinyConfig()
    assert (cfg.q_lora_rank, cfg.kv_lora_rank, cfg.qk_head_dim) == (t.q_lora_rank, 512, 128)
    assert (cfg.n_group, cfg.topk_group, cfg.num_experts_per_tok) == (t.n_group, t.topk_group, 2)
    assert [cfg.is_moe_layer(i) for i in range(2)] == [False, True]
    rope = cfg.rope_parameters()
    assert rope["rope_type"] == "deepseek_yarn" and rope["factor"] == 40


def test_q_lora_null_means_plain_q_projection():
    assert DSConfig.from_hf(_hf(q_lora_rank=None)).q_lora_rank is None


def test_yarn_softmax_scale_matches_transformers():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    hf = _hf()
    cfg = DSConfig.from_hf(hf)
    want = yarn_apply_mscale(hf.rope_parameters, 128 ** -0.5)
    assert cfg.softmax_scale == pytest.approx(want, rel=1e-12)
    # 0.1·ln(40)+1 squared: the correction is real, not a no-op.
    assert cfg.softmax_scale == pytest.approx(128 ** -0.5 * (0.1 * math.log(40) + 1) ** 2)


def test_plain_rope_has_plain_scale():
    cfg = DSConfig.from_hf(_hf(rope_scaling=None))
    assert cfg.rope_scaling is None and cfg.softmax_scale == 128 ** -0.5
    assert cfg.rope_parameters()["rope_type"] == "default"


@pytest.mark.parametrize("field,value", [("scoring_func", "softmax"),
                                         ("topk_method", "greedy"),
                                         ("hidden_act", "gelu"),
                                         ("tie_word_embeddings", True)])
def test_unsupported_variant_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DSConfig.from_hf(_hf(**{field: value}))


def test_groups_that_do_not_divide_are_refused():
    hf = _hf()
    hf.n_group = 3  # 8 experts do not split into 3 groups
    with pytest.raises(ValueError, match="n_group=3"):
        DSConfig.from_hf(hf)


def test_plain_namespace_config_json_reads_like_transformers():
    # vLLM may hand over its own config object; from_hf only needs the config.json fields.
    ns = SimpleNamespace(**TinyConfig().hf_config())
    assert DSConfig.from_hf(ns) == DSConfig.from_hf(_hf())


def test_missing_required_field_is_named():
    raw = TinyConfig().hf_config()
    del raw["kv_lora_rank"]
    with pytest.raises(ValueError, match="kv_lora_rank"):
        DSConfig.from_hf(SimpleNamespace(**raw))


@pytest.mark.parametrize("field", ["kv_lora_rank", "q_lora_rank", "n_group"])
def test_config_json_must_state_what_transformers_would_default(field):
    # transformers' DeepseekV3Config has a value for every one of these (DeepSeek-V3-671B's);
    # only the raw config.json's keys show that this one was never written.
    raw = TinyConfig().hf_config()
    del raw[field]
    hf = _hf()
    with pytest.raises(ValueError, match=f"config.json does not state {field}:"):
        DSConfig.from_hf(hf, stated=raw.keys())


def test_config_json_stating_null_q_lora_rank_is_fine():
    raw = TinyConfig(q_lora_rank=None).hf_config()
    assert raw["q_lora_rank"] is None
    assert DSConfig.from_hf(_hf(q_lora_rank=None), stated=raw.keys()).q_lora_rank is None
