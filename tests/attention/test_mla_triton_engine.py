"""The GPU-side glue inside the real vLLM engine, on a CPU: Triton through the interpreter.

Issue 9 item 4. One server on the block-FP8 tiny checkpoint with DS_PLUGIN_TRITON_ON_CPU=1 and
TRITON_INTERPRET=1: ds-plugin's MLA backend picks its Triton adapter (latent-cache write, paged
decode) and ds_fp8 its Triton classes (Fp8Linear, TritonFp8Experts), so the strides, block
tables, split count and scale layouts that the GPU runs are the ones run here, called by the
engine. The reference server runs the same checkpoint on the CPU
paths (torch adapter, weights dequantized at load). Greedy tokens must agree up to the first
near-tie of the reference (0.05 nats), and most steps must be decisive.

The interpreter is slow: two layers, one short prompt, a few tokens. Measured on the shared
2-core box (2026-12-02): 214 s in all (interpreted server 128 s, reference 82 s); a 280-token
prompt took 360 s, most of it the interpreted prefill GEMMs. Sequences stay under 256 tokens,
so the decode runs as one split; the split-KV merge and its workspace are left to
tests/attention/test_mla_conformance.py, which runs them under the interpreter through the same
adapter.
"""

from __future__ import annotations

import time

import pytest

from ds_plugin.testing.server import CPU_DEFAULT_ARGS, VllmServer
from tests.attention.greedy import compare_until_near_tie, greedy

pytestmark = pytest.mark.engine

PROMPT = "The quick brown fox jumps over the lazy dog. " * 3
MAX_TOKENS = 8
NEAR_TIE = 0.05
ARGS = [*CPU_DEFAULT_ARGS, "--attention-backend", "CPU_MLA", "--max-num-seqs", "1"]
# Eager for the interpreted server only: vLLM compiles the model with fullgraph=True, and Dynamo
# cannot trace a kernel launched through the Triton interpreter (ds_fp8's first launch,
# fp8_act_quant in Fp8Linear, reaches InterpretedFunction.run, whose UntypedStorage.data_ptr
# call is "Unsupported method call"; compiled Triton kernels are traced as user-defined kernels,
# interpreted ones are plain Python). The MLA decode is not traced either way (attention is an
# opaque op in vLLM's graph); the reference server runs in the default compiled mode.
INTERPRETED_ARGS = [*ARGS, "--enforce-eager"]


def test_triton_paths_in_the_engine_match_the_cpu_paths(tiny_ckpt_fp8, tmp_path):
    start = time.monotonic()
    env = {"DS_PLUGIN_CPU_MLA": "1", "DS_PLUGIN_TRITON_ON_CPU": "1", "TRITON_INTERPRET": "1"}
    with VllmServer(tiny_ckpt_fp8, args=INTERPRETED_ARGS, env=env,
                    log_path=tmp_path / "triton.log") as srv:
        got, sizes = greedy(srv, [PROMPT], MAX_TOKENS)
        log = srv.log_text()
    interpreted_s = time.monotonic() - start
    assert "decode via triton" in log, log[-3000:]
    assert "ds_fp8: linear layers run the CUDA fp8" in log, log[-3000:]
    assert "ds_fp8: MoE layers run the CUDA fp8 (Triton fused MoE)" in log, log[-3000:]
    assert sizes[0] > 16, sizes  # the prompt fills more than one 16-token page
    with VllmServer(tiny_ckpt_fp8, args=ARGS, env={"DS_PLUGIN_CPU_MLA": "1"},
                    log_path=tmp_path / "cpu.log") as ref:
        want, _ = greedy(ref, [PROMPT], MAX_TOKENS)
        ref_log = ref.log_text()
    assert "decode via torch" in ref_log and "ds_fp8: linear layers run the CPU" in ref_log
    compared = compare_until_near_tie(got, want, NEAR_TIE)
    assert compared >= MAX_TOKENS // 2, (got, want)
    print(f"interpreted server: {interpreted_s:.0f} s; {compared} of {MAX_TOKENS} steps compared")
