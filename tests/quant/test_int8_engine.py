"""A w8a8_int8 tiny checkpoint served by the real vLLM engine (CPU, default compiled mode)
against its exact bf16 twin, and vLLM in-tree's refusal of both INT8 layouts.

On CPU both INT8 methods dequantize at load. The generator snaps the weights to a grid that
both INT8 layouts (power-of-two scales) and bf16 hold exactly, so the channel checkpoint, the
block one and the twin (write_bf16_twin) describe the very same bf16 weights. Two engine
starts (channel, twin); the block layout's whole-model load on the same weights is
tests/quant/test_int8.py's (in process: the engine would add only what the channel run
proves). The in-tree baseline needs only vLLM's ModelConfig, which is where an engine start
fails; one subprocess per plugin setting resolves both checkpoints.
"""

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("vllm")

from ds_plugin.testing.checkpoint import TinyConfig, write_bf16_twin, write_checkpoint  # noqa: E402
from ds_plugin.testing.server import child_env  # noqa: E402
from tests.model.conformance import LOGIT_TIE, run_vllm  # noqa: E402

pytestmark = pytest.mark.engine

OURS = "ds_plugin.model.deepseek_v3.DeepseekV3ForCausalLM"
TEXTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:",
         "DeepSeek-V3 uses multi-head latent attention and"]
STEPS = 24
QUANTS = {"int8-channel": "w8a8_int8", "int8-block": "blockwise_int8"}

_RESOLVE = """
import json, sys
from vllm.config import ModelConfig
from vllm.plugins import load_general_plugins
load_general_plugins()  # what every engine process does first (VLLM_PLUGINS filters it)
out = {}
for path in sys.argv[1:]:
    try:
        out[path] = {"quantization": ModelConfig(model=path).quantization}
    except Exception as e:
        out[path] = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    made = {q: write_checkpoint(d / q, TinyConfig(logit_peak=2.0), quant=q) for q in QUANTS}
    return d, made, write_bf16_twin(made["int8-channel"], d / "bf16-twin")


def _resolve(paths, plugins: bool) -> dict:
    env = child_env() if plugins else child_env({"VLLM_PLUGINS": "none"})
    proc = subprocess.run([sys.executable, "-c", _RESOLVE, *map(str, paths)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_in_tree_refuses_and_plugin_claims(ckpts):
    _, made, _ = ckpts
    baseline = _resolve(made.values(), plugins=False)
    ours = _resolve(made.values(), plugins=True)
    for quant, path in made.items():
        # What vLLM 0.32 in-tree (VLLM_PLUGINS=none) says when asked to load it.
        err = baseline[str(path)].get("error", "")
        assert f"Unknown quantization method: {QUANTS[quant]}" in err, baseline
        assert ours[str(path)] == {"quantization": QUANTS[quant]}


@pytest.fixture(scope="module")
def served(ckpts):
    d, made, twin = ckpts
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(twin / "tokenizer.json"))
    prompts = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]
    req = {"prompts": prompts, "max_tokens": STEPS}
    return {"int8-channel": run_vllm({**req, "model": str(made["int8-channel"]),
                                      "tag": "int8-channel"}, d),
            "twin": run_vllm({**req, "model": str(twin), "tag": "twin"}, d)}


def _assert_same_model(ours: dict, twin: dict, what: str) -> None:
    for i, (a, b) in enumerate(zip(ours["prompt_logits"], twin["prompt_logits"])):
        assert a.isfinite().all(), f"{what} prompt {i}: non-finite logits"
        # The same bf16 weights; only the MoE implementation may differ (ours: dequantized
        # top-k experts; the twin: vLLM's unquantized CPU MoE), so logits agree to bf16 noise.
        la, lb = a.log_softmax(-1), b.log_softmax(-1)
        top = b.argmax(-1)
        gap = (la.gather(1, top[:, None]) - lb.gather(1, top[:, None])).abs().max()
        assert gap <= 0.05, f"{what} prompt {i}: log-prob of the twin's top token differs by {gap}"
        cos = torch.nn.functional.cosine_similarity(a - a.mean(-1, keepdim=True),
                                                    b - b.mean(-1, keepdim=True), dim=-1)
        assert float(cos.min()) >= 0.9999, f"{what} prompt {i}: cosine {float(cos.min())}"
        s = b.topk(2, dim=-1).values
        decided = (s[:, 0] - s[:, 1]) > LOGIT_TIE
        assert torch.equal(a.argmax(-1)[decided], top[decided]), f"{what} prompt {i}"
    # Peaked logits (logit_peak=2): greedy decoding has no near-ties to diverge on.
    assert ours["tokens"] == twin["tokens"], what


def test_w8a8_int8_serves_as_its_bf16_twin(served):
    ours, twin = served["int8-channel"], served["twin"]
    assert ours["classes"] == [OURS] and twin["classes"] == [OURS]
    _assert_same_model(ours, twin, "int8-channel")
