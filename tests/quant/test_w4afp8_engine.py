"""A W4AFP8 tiny checkpoint (int4 routed experts with static input scales, block-FP8 for the
rest, MTP experts block-FP8) served by the real vLLM engine (CPU, default compiled mode)
against the fp32 reference of its exact bf16 twin, and vLLM in-tree's refusal of the same
checkpoint.

On CPU the w4afp8 method dequantizes at load; the checkpoint's int4 scales are powers of
two, so the twin (write_bf16_twin) holds the very bf16 weights the served model computes
with. One engine start, held to the fp32 transformers model on the twin with the bf16 model
tests' tolerances (tests/model/conformance), as the INT8 engine test is: a served twin cost a
second start and proved less. The in-tree baseline needs only vLLM's ModelConfig, which is
where an engine start fails.
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
# What vLLM 0.32 in-tree says (VLLM_PLUGINS=none) when asked to load this checkpoint.
IN_TREE_REFUSAL = "Unknown quantization method: w4afp8"

_RESOLVE = """
import json, sys
from vllm.config import ModelConfig
from vllm.plugins import load_general_plugins
load_general_plugins()  # what every engine process does first (VLLM_PLUGINS filters it)
try:
    print(json.dumps({"quantization": ModelConfig(model=sys.argv[1]).quantization}))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
"""


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("w4afp8")
    w4 = write_checkpoint(d / "w4afp8", TinyConfig(logit_peak=2.0), quant="w4afp8")
    return d, w4, write_bf16_twin(w4, d / "bf16-twin")


def _resolve(path, plugins: bool) -> dict:
    env = child_env() if plugins else child_env({"VLLM_PLUGINS": "none"})
    proc = subprocess.run([sys.executable, "-c", _RESOLVE, str(path)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_in_tree_refuses_and_plugin_claims(ckpts):
    _, w4, _ = ckpts
    baseline = _resolve(w4, plugins=False)
    assert IN_TREE_REFUSAL in baseline.get("error", ""), baseline
    assert _resolve(w4, plugins=True) == {"quantization": "w4afp8"}


@pytest.fixture(scope="module")
def prompts(ckpts):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpts[1] / "tokenizer.json"))
    return [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]


@pytest.fixture(scope="module")
def served(ckpts, prompts):
    d, w4, _ = ckpts
    return run_vllm({"prompts": prompts, "max_tokens": STEPS, "tag": "w4afp8",
                     "model": str(w4)}, d)


@pytest.fixture(scope="module")
def reference(ckpts):
    model = load_reference(ckpts[2])
    return model, conformance.RoutingMargins(model)


def test_w4afp8_serves_as_its_bf16_twin(served, reference, prompts):
    model, margins = reference
    assert served["classes"] == [OURS]
    conformance.assert_serves_as_reference(served, model, margins, prompts, STEPS, "w4afp8")
