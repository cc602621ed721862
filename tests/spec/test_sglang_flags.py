"""SGLang's speculative launch flags -> vLLM's --speculative-config (ds_plugin.spec.sglang_flags)."""

from __future__ import annotations

import argparse
import json

import pytest

from ds_plugin.spec.sglang_flags import (SpeculativeFlagError, rewrite_sglang_speculative,
                                         sglang_speculative_to_vllm)


def _spec(argv: list[str]) -> dict:
    out = rewrite_sglang_speculative(argv)
    assert out[-2] == "--speculative-config"
    return json.loads(out[-1])


@pytest.mark.parametrize("algo", ["EAGLE", "NEXTN", "nextn"])
@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_sglang_launch_line_becomes_mtp_config(algo, steps):
    argv = ["--tp", "8", "--speculative-algorithm", algo, "--speculative-num-steps", str(steps),
            "--speculative-eagle-topk", "1", f"--speculative-num-draft-tokens={steps + 1}",
            "--trust-remote-code"]
    out = rewrite_sglang_speculative(argv)
    assert out[:3] == ["--tp", "8", "--trust-remote-code"]
    assert json.loads(out[-1]) == {"method": "mtp", "num_speculative_tokens": steps}


def test_defaults_are_sglangs_for_deepseek():
    assert _spec(["--speculative-algorithm", "EAGLE"]) == {"method": "mtp",
                                                           "num_speculative_tokens": 3}
    assert _spec(["--speculative-algorithm", "NEXTN", "--speculative-num-steps", "2"])[
        "num_speculative_tokens"] == 2


def test_no_sglang_flags_leaves_argv_alone():
    argv = ["--speculative-config", '{"method": "mtp", "num_speculative_tokens": 2}', "-tp", "2"]
    assert rewrite_sglang_speculative(argv) == argv
    assert sglang_speculative_to_vllm({}) is None


def test_namespace_and_ints_accepted():
    ns = argparse.Namespace(speculative_algorithm="EAGLE", speculative_num_steps=2,
                            speculative_eagle_topk=1, speculative_num_draft_tokens=None)
    assert sglang_speculative_to_vllm(ns) == {"method": "mtp", "num_speculative_tokens": 2}


@pytest.mark.parametrize("argv, flag", [
    (["--speculative-algorithm", "EAGLE", "--speculative-eagle-topk", "4"],
     "--speculative-eagle-topk 4: tree drafting"),
    (["--speculative-algorithm", "EAGLE3"], "--speculative-algorithm EAGLE3"),
    (["--speculative-algorithm", "NGRAM"], "--speculative-algorithm NGRAM"),
    (["--speculative-algorithm", "EAGLE", "--speculative-num-steps", "3",
      "--speculative-num-draft-tokens", "8"], "--speculative-num-draft-tokens 8"),
    (["--speculative-algorithm", "EAGLE", "--speculative-num-steps", "0"],
     "--speculative-num-steps 0"),
    (["--speculative-algorithm", "EAGLE", "--speculative-num-steps", "three"],
     "--speculative-num-steps 'three'"),
    (["--speculative-num-steps", "3"], "--speculative-num-steps needs --speculative-algorithm"),
    (["--speculative-algorithm"], "--speculative-algorithm needs a value"),
    (["--speculative-algorithm", "--tp", "8"], "--speculative-algorithm needs a value"),
    (["--speculative-algorithm", "EAGLE", "--speculative-algorithm=NEXTN"],
     "--speculative-algorithm given twice"),
    (["--speculative-algorithm", "EAGLE", "--speculative-config", "{}"],
     "--speculative-config and SGLang's"),
])
def test_refusals_name_the_flag(argv, flag):
    with pytest.raises(SpeculativeFlagError) as err:
        rewrite_sglang_speculative(argv)
    assert str(err.value).startswith(flag), str(err.value)
