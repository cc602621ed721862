"""`ds-plugin conformance` against the session's tiny CPU server: the protocol checks PASS
(their outputs forced through the test-only logits processor, the CLI's --test-force-output);
quality and speed report real measured values, and GSM8K fails honestly on random weights."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ds_plugin.cli.conformance import run_checks
from tests.conftest import SERVED_NAME

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = {"models", "tool_call", "tool_call_stream", "reasoning_split", "v31_thinking_toggle",
            "thinking_budget", "stream_equals_nonstream"}


def test_conformance_on_the_tiny_server(server):
    # The session server: deepseekv3 tool parser (V3 markup), deepseek-v3 reasoning parser
    # (V3.1's thinking switch).
    results = {r.name: r for r in run_checks(
        server.url, SERVED_NAME, family="v31", force="v3", max_tokens=256,
        gsm8k={"questions": 4, "max_tokens": 32, "parallel": 4}, decode_tokens=32)}
    assert set(results) == PROTOCOL | {"gsm8k", "decode_batch1", "mtp_acceptance"}
    for name in PROTOCOL:
        assert results[name].status == "PASS", results[name]
    gsm = results["gsm8k"]
    assert gsm.status == "FAIL" and re.match(r"0\.\d{3} \(\d/4, 8-shot", gsm.measured), gsm
    assert gsm.threshold == "> 0.935" and "SGLang CI" in gsm.source
    decode = results["decode_batch1"]
    assert re.match(r"\d+\.\d tok/s over 32 tokens; TTFT \d+ ms", decode.measured), decode
    assert results["mtp_acceptance"].status == "SKIP"  # no speculative decoding here


def test_conformance_cli_json_and_exit_status(server):
    def cli(*extra):
        return subprocess.run(
            [sys.executable, "-m", "ds_plugin.cli", "conformance", "--base-url", server.url,
             "--model", SERVED_NAME, "--family", "v31", "--json", *extra],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
    forced = cli("--checks", "models,tool_call,reasoning_split", "--test-force-output", "v3")
    assert forced.returncode == 0, forced.stderr
    assert [r["status"] for r in json.loads(forced.stdout)] == ["PASS"] * 3
    # Unforced, a random tiny model does not call the tool: a protocol FAIL, exit status 1.
    plain = cli("--checks", "tool_call", "--max-tokens", "16")
    assert plain.returncode == 1 and json.loads(plain.stdout)[0]["status"] == "FAIL"
