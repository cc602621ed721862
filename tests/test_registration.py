"""register(): discovered by vLLM's own loader from a fresh process, idempotent, and
honouring VLLM_PLUGINS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pathlib import Path

import ds_plugin

ROOT = Path(__file__).resolve().parents[1]  # the probe imports tests.helpers from here

# Runs in a fresh interpreter: vLLM's loader discovers the entry point and calls it, then
# the script reports what the registries hold.
PROBE = r"""
import json
from tests.helpers.vllm_api import CachedHfTokenizer, load_general_plugins
load_general_plugins()
from ds_plugin import MODELS
from tests.helpers.vllm_probe import registered_model_target
print(json.dumps({
    "patched": bool(getattr(CachedHfTokenizer.from_pretrained, "__ds_plugin_tokenizer_patch__", False)),
    "models": {a: registered_model_target(a) for a in MODELS},
}))
"""


def _probe(env_extra: dict[str, str]) -> dict:
    env = {**os.environ, **env_extra}
    env.pop("VLLM_PLUGINS", None) if "VLLM_PLUGINS" not in env_extra else None
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_entry_point_is_declared():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "ds_plugin"]
    assert [ep.value for ep in eps] == ["ds_plugin:register"]
    assert eps[0].load() is ds_plugin.register


def test_vllm_discovers_and_calls_the_plugin_in_a_fresh_process():
    got = _probe({})
    assert got["patched"]
    assert got["models"] == dict(ds_plugin.MODELS)


def test_vllm_plugins_allow_list_is_honoured():
    assert not _probe({"VLLM_PLUGINS": "some_other_plugin"})["patched"]
    assert _probe({"VLLM_PLUGINS": "some_other_plugin,ds_plugin"})["patched"]


def _snapshot() -> str:
    from tests.helpers.vllm_probe import model_registry_snapshot, registered_parsers

    return json.dumps({**model_registry_snapshot(ds_plugin.MODELS),
                       "tools": registered_parsers("tool"),
                       "reasoning": registered_parsers("reasoning")}, sort_keys=True)


def test_register_twice_is_harmless():
    ds_plugin.register()
    first = _snapshot()
    ds_plugin.register()
    assert _snapshot() == first
