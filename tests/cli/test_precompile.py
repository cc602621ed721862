"""`ds-plugin precompile`: the per-rank shapes derived from config.json (pure function), the
refusal without CUDA, and (H200) a real run into a fresh Triton cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ds_plugin.cli.kernel_shapes import PREFILL_TOKENS, PlanError, capture_sizes, plan

ROOT = Path(__file__).resolve().parents[2]
# DeepSeek-V3's released config.json (the fields the shapes depend on).
V3 = {"hidden_size": 7168, "num_attention_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
      "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
      "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 256,
      "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
      "max_position_embeddings": 163840,
      "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128],
                              "activation_scheme": "dynamic", "fmt": "e4m3"}}


def _nk(p):
    return {g.name: (g.n, g.k) for g in p.gemms}


def test_single_rank_shapes_are_deepgemms_deepseek_list():
    # DeepGEMM benchmarked "all shapes potentially used in DeepSeek-V3/R1 inference without
    # tensor parallelism" (anchors.md A.2); they are the attention and shared-expert GEMMs.
    deepgemm = {(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168),
                (7168, 2048)}
    p = plan(V3)
    assert p.fp8 and deepgemm <= set(_nk(p).values())
    assert (p.moe.experts, p.moe.intermediate, p.moe.top_k) == (256, 2048, 8)


def test_tp8_and_ep_split_per_rank():
    tp8 = plan(V3, tp=8)
    assert _nk(tp8) == {"fused_qkv_a_proj": (2112, 7168), "q_b_proj": (3072, 1536),
                        "kv_b_proj": (4096, 512), "o_proj": (7168, 2048),
                        "mlp.gate_up_proj": (4608, 7168), "mlp.down_proj": (7168, 2304),
                        "shared_experts.gate_up_proj": (512, 7168),
                        "shared_experts.down_proj": (7168, 256)}
    assert (tp8.moe.experts, tp8.moe.intermediate) == (256, 256)
    ep8 = plan(V3, tp=8, ep=True)
    assert (ep8.moe.experts, ep8.moe.intermediate) == (32, 2048)
    assert tp8.mla.heads == 16 and tp8.mla.rank == 512 and tp8.mla.max_model_len == 163840


def test_token_counts_are_vllms_capture_sizes_plus_prefill():
    sizes = capture_sizes()
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-1] == 512 and 248 in sizes and 264 not in sizes
    p = plan(V3, tp=8)
    assert set(p.tokens) == set(sizes) | set(PREFILL_TOKENS)
    assert p.decode_batches == tuple(sizes) and p.query_len == 1
    mtp = plan(V3, tp=8, spec_tokens=3)
    assert mtp.query_len == 4 and all(b * 4 <= 512 for b in mtp.decode_batches)
    assert {b * 4 for b in mtp.decode_batches} <= set(mtp.tokens)


def test_bf16_checkpoint_and_bad_configs():
    assert not plan({**V3, "quantization_config": None}).fp8
    lite = {**V3, "q_lora_rank": None, "num_attention_heads": 16}
    assert set(_nk(plan(lite))) >= {"q_proj", "kv_a_proj_with_mqa"}
    with pytest.raises(PlanError, match="num_attention_heads = 128 does not split over 3"):
        plan(V3, tp=3)
    with pytest.raises(PlanError, match="kv_lora_rank is missing"):
        plan({k: v for k, v in V3.items() if k != "kv_lora_rank"})
    with pytest.raises(PlanError, match="n_routed_experts = 255 does not split over 2"):
        plan({**V3, "n_routed_experts": 255}, tp=2, ep=True)


# The GPU machine has torch and Triton but no vLLM (and no pydantic / PyYAML): precompile
# runs there with these blocked.
NO_VLLM = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"vllm", "pydantic", "yaml"}:
            raise ImportError(f"{name} is absent here")
sys.meta_path.insert(0, Absent())
from ds_plugin.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _precompile(*args, **env):
    return subprocess.run([sys.executable, "-c", NO_VLLM, "precompile", *args],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_tasks_cover_the_plan(tiny_ckpt_fp8):
    from ds_plugin.cli.precompile import load_config, tasks

    p = plan(load_config(str(tiny_ckpt_fp8)), max_capture=2, prefill=(17,))
    labels = [label for label, _ in tasks(p, torch.device("cpu"))]
    assert sum(lb.startswith("fp8 gemm") for lb in labels) == len(p.gemms) * 3  # M = 1, 2, 17
    assert sum(lb.startswith("fp8 moe") for lb in labels) == 3
    assert sum(lb.startswith("mla decode") for lb in labels) == 2  # batch 1, 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is the CPU behaviour")
def test_cli_runs_every_kernel_call_interpreted_without_vllm(tiny_ckpt_fp8, tmp_path):
    # The same launches as on a GPU, through Triton's interpreter (TRITON_INTERPRET=1 from
    # tests/conftest.py): the calls are valid for every shape derived; nothing is cached.
    out = _precompile("--model", str(tiny_ckpt_fp8), "--max-batch", "2", "--prefill-tokens",
                      "17", "--cache-dir", str(tmp_path / "triton"), "--json",
                      TRITON_INTERPRET="1")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    p = plan(json.loads((tiny_ckpt_fp8 / "config.json").read_text()), max_capture=2,
             prefill=(17,))
    assert summary["shapes"] == len(p.gemms) * 3 + 3 + 2 and summary["fp8_checkpoint"]
    assert summary["device"].startswith("CPU, Triton interpreter")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is the CPU behaviour")
def test_refuses_without_cuda(tiny_ckpt):
    out = _precompile("--model", str(tiny_ckpt), TRITON_INTERPRET="0")
    assert out.returncode == 2
    assert "no CUDA device" in out.stderr and out.stdout == ""
    bad = _precompile("--model", str(tiny_ckpt), "--prefill-tokens", "0,x")
    assert bad.returncode == 2 and "--prefill-tokens" in bad.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_precompile_fills_a_fresh_cache(tiny_ckpt_fp8, tmp_path):
    cache = tmp_path / "triton"
    out = _precompile("--model", str(tiny_ckpt_fp8), "--max-batch", "16", "--cache-dir",
                      str(cache), "--json", TRITON_INTERPRET="0")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["fp8_checkpoint"] and summary["shapes"] > 0
    assert summary["new_cache_files"] > 0 and summary["cache_dir"] == str(cache)
