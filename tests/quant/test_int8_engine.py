"""A w8a8_int8 tiny checkpoint served by the real vLLM engine (CPU, default compiled mode)
against the fp32 reference of its exact bf16 twin, and vLLM in-tree's refusal of both INT8
layouts.

On CPU both INT8 methods dequantize at load. The generator snaps the weights to a grid that
both INT8 layouts (power-of-two scales) and bf16 hold exactly, so the channel checkpoint, the
block one and the twin (write_bf16_twin) describe the very same weights. One engine start
(channel), held to the fp32 transformers model on the twin with the bf16 model tests'
tolerances (tests/model/conformance): a served twin would cost a second start and prove
less. The block layout's whole-model load on the same weights is tests/quant/test_int8.py's
(in process: the engine would add only what the channel run proves). The in-tree baseline
needs only vLLM's ModelConfig, which is where an engine start fails; one subprocess per
plugin setting resolves both checkpoints.
"""

import json
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

from ds_plugin.testing.checkpoint import TinyConfig, write_bf16_twin, write_checkpoint  # noqa: E402
from ds_plugin.testing.server import child_env  # noqa: E402
from tests.model import conformance  # noqa: E402
from tests.model.conformance import run_vllm  # noqa: E402
from tests.model.hf_reference import load_reference  # noqa: E402

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
def prompts(ckpts):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpts[2] / "tokenizer.json"))
    return [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]


@pytest.fixture(scope="module")
def served(ckpts, prompts):
    d, made, _ = ckpts
    return run_vllm({"prompts": prompts, "max_tokens": STEPS, "tag": "int8-channel",
                     "model": str(made["int8-channel"])}, d)


@pytest.fixture(scope="module")
def reference(ckpts):
    model = load_reference(ckpts[2])
    return model, conformance.RoutingMargins(model)


def test_w8a8_int8_serves_as_its_bf16_twin(served, reference, prompts):
    model, margins = reference
    assert served["classes"] == [OURS]
    conformance.assert_serves_as_reference(served, model, margins, prompts, STEPS, "int8-channel")
