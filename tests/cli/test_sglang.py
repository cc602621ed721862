"""SGLang launch flags -> vLLM's, flag by flag; every translated line parses with vLLM's own
serve argument parser (so a flag vLLM would reject never ships)."""

from __future__ import annotations

import json
import shlex

import pytest

from ds_plugin.cli.serve import vllm_argv
from ds_plugin.parsers.templates import template_path
from ds_plugin.recipes.sglang import (
    FLAGS,
    SGLANG_ONLY,
    TranslationError,
    parse_command,
    translate,
    translate_mixed,
)

M = "deepseek-ai/DeepSeek-V3"


@pytest.fixture(scope="module")
def vllm_parse():
    from ds_plugin._vllm.cli import check_serve_line, serve_parser

    parser = serve_parser()
    return lambda argv: check_serve_line(shlex.join(["vllm", "serve", *argv]), parser)


def sgl(flags: str) -> list[str]:
    return translate(shlex.split(f"--model-path {M} {flags}")).argv()


# (SGLang flags, vLLM argv after the model, what vLLM's parser then holds)
CASES = [
    ("", [], {}),
    ("--tp 8", ["--tensor-parallel-size", "8"], {"tensor_parallel_size": 8}),
    ("--tp-size 4", ["--tensor-parallel-size", "4"], {"tensor_parallel_size": 4}),
    ("--tensor-parallel-size=2", ["--tensor-parallel-size", "2"], {"tensor_parallel_size": 2}),
    ("--tp 8 --dp 8 --enable-dp-attention", ["--data-parallel-size", "8"],
     {"tensor_parallel_size": 1, "data_parallel_size": 8}),
    ("--tp 16 --dp-size 2 --enable-dp-attention",
     ["--tensor-parallel-size", "8", "--data-parallel-size", "2"],
     {"tensor_parallel_size": 8, "data_parallel_size": 2}),
    ("--tp 8 --ep-size 8", ["--tensor-parallel-size", "8", "--enable-expert-parallel"],
     {"enable_expert_parallel": True}),
    ("--tp 8 --ep 8", ["--tensor-parallel-size", "8", "--enable-expert-parallel"],
     {"enable_expert_parallel": True}),
    ("--tp 8 --enable-ep-moe", ["--tensor-parallel-size", "8", "--enable-expert-parallel"],
     {"enable_expert_parallel": True}),
    ("--tp 8 --dp 8 --enable-dp-attention --expert-parallel-size 8",
     ["--data-parallel-size", "8", "--enable-expert-parallel"], {"enable_expert_parallel": True}),
    ("--mem-fraction-static 0.82", ["--gpu-memory-utilization", "0.82"],
     {"gpu_memory_utilization": 0.82}),
    ("--tool-call-parser deepseekv3",
     ["--enable-auto-tool-choice", "--tool-call-parser", "deepseekv3"],
     {"enable_auto_tool_choice": True, "tool_call_parser": "deepseekv3"}),
    ("--reasoning-parser deepseek-r1", ["--reasoning-parser", "deepseek-r1"], {}),
    ("--speculative-algorithm EAGLE --speculative-num-steps 3 --speculative-eagle-topk 1 "
     "--speculative-num-draft-tokens 4",
     ["--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": 3})],
     {"speculative_config": {"method": "mtp", "num_speculative_tokens": 3}}),
    ("--speculative-algorithm NEXTN --speculative-num-steps 1",
     ["--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": 1})],
     {"speculative_config": {"method": "mtp", "num_speculative_tokens": 1}}),
    ("--speculative-algorithm EAGLE --speculative-num-draft-tokens 3",
     ["--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": 2})],
     {"speculative_config": {"method": "mtp", "num_speculative_tokens": 2}}),
    ("--dist-timeout 3600", ["--distributed-timeout-seconds", "3600"],
     {"distributed_timeout_seconds": 3600}),
    ("--trust-remote-code", ["--trust-remote-code"], {"trust_remote_code": True}),
    ("--host 0.0.0.0 --port 30000", ["--host", "0.0.0.0", "--port", "30000"],
     {"host": "0.0.0.0", "port": 30000}),
    ("--quantization w8a8_int8", ["--quantization", "w8a8_int8"], {"quantization": "w8a8_int8"}),
    ("--context-length 65536", ["--max-model-len", "65536"], {"max_model_len": 65536}),
    ("--served-model-name ds", ["--served-model-name", "ds"], {"served_model_name": ["ds"]}),
    ("--tp 16 --nnodes 2 --node-rank 0 --dist-init-addr 10.0.0.1:5000",
     ["--tensor-parallel-size", "16", "--nnodes", "2", "--node-rank", "0", "--master-addr",
      "10.0.0.1", "--master-port", "5000"], {"nnodes": 2, "master_addr": "10.0.0.1"}),
    ("--tp 16 --nnodes 2 --node-rank 1 --dist-init-addr 10.0.0.1:5000",
     ["--tensor-parallel-size", "16", "--nnodes", "2", "--node-rank", "1", "--master-addr",
      "10.0.0.1", "--master-port", "5000", "--headless"], {"node_rank": 1, "headless": True}),
]


@pytest.mark.parametrize("flags, expected, parsed", CASES,
                         ids=[c[0] or "model-only" for c in CASES])
def test_flag_translation(flags, expected, parsed, vllm_parse):
    argv = sgl(flags)
    assert argv == [M, *expected]
    ns = vllm_parse(argv)
    assert ns.model_tag == M
    for key, value in parsed.items():
        assert getattr(ns, key) == value, key


def test_chat_template_from_sglangs_repo_becomes_ours(vllm_parse):
    launch = translate(shlex.split(f"--model {M} --chat-template "
                                   "./examples/chat_template/tool_chat_template_deepseekv31.jinja"))
    assert launch.chat_template == str(template_path("deepseekv31"))
    assert "deepseekv31" in launch.notes[0]
    assert vllm_parse(launch.argv()).chat_template == str(template_path("deepseekv31"))


@pytest.mark.parametrize("flags, culprit", [
    ("--enable-torch-compile", "--enable-torch-compile"),
    ("--speculative-algorithm EAGLE --speculative-eagle-topk 4", "--speculative-eagle-topk"),
    ("--speculative-algorithm EAGLE --speculative-num-steps 3 --speculative-num-draft-tokens 8",
     "--speculative-num-draft-tokens"),
    ("--speculative-algorithm EAGLE3", "--speculative-algorithm"),
    ("--speculative-num-steps 3", "--speculative-num-steps"),
    ("--tp 8 --dp 2", "--dp"),
    ("--tp 8 --enable-dp-attention", "--enable-dp-attention"),
    ("--tp 8 --dp 3 --enable-dp-attention", "--enable-dp-attention"),
    ("--tp 8 --ep-size 4", "--ep-size"),
    ("--tp eight", "--tp"),
    ("--tp 8 --tp 4", "--tp"),
    ("--port", "--port"),
    ("--trust-remote-code=yes", "--trust-remote-code"),
    ("--dist-init-addr 10.0.0.1", "--dist-init-addr"),
])
def test_refused_by_name(flags, culprit):
    with pytest.raises(TranslationError) as e:
        sgl(flags)
    assert str(e.value).startswith(culprit)


def test_launcher_words_and_env_are_read():
    env, argv = parse_command("SGL_X=1 python3 -m sglang.launch_server --model-path m --tp 2")
    assert env == {"SGL_X": "1"} and argv == ["--model-path", "m", "--tp", "2"]
    with pytest.raises(TranslationError, match="sglang.launch_server"):
        parse_command("torchrun serve.py --tp 2")


def test_from_sglang_prints_vllm_line_and_appends_vllm_flags():
    args, notes, env, ns = vllm_argv(["--from-sglang", "A=1 python3 -m sglang.launch_server "
                                      f"--model {M} --tp 8", "--max-model-len", "4096",
                                      "--dry-run"])
    assert args == [M, "--tensor-parallel-size", "8", "--max-model-len", "4096"]
    assert env == {"A": "1"} and ns.dry_run and notes == []


def test_sglang_flags_mixed_with_vllm_flags(vllm_parse):
    args, _ = translate_mixed([M, "-tp", "8", "--speculative-algorithm", "EAGLE",
                               "--speculative-num-steps", "2", "--speculative-eagle-topk", "1",
                               "--max-model-len", "4096"])
    ns = vllm_parse(args)
    assert ns.tensor_parallel_size == 8 and ns.max_model_len == 4096
    assert ns.speculative_config == {"method": "mtp", "num_speculative_tokens": 2}
    assert translate_mixed([M, "-tp", "8"]) == ([M, "-tp", "8"], [])  # pure vLLM: untouched


@pytest.mark.parametrize("argv, culprit", [
    ([M, "-tp", "8", "--dp", "8", "--enable-dp-attention"], "-tp"),
    ([M, "--speculative-algorithm", "EAGLE", "--speculative-config", "{}"], "--speculative-config"),
    ([M, "--model-path", M, "--tp", "2"], "--model-path"),
])
def test_mixed_conflicts_refused(argv, culprit):
    with pytest.raises(TranslationError) as e:
        translate_mixed(argv)
    assert str(e.value).startswith(culprit)


def test_sglang_only_flags_are_not_vllm_flags(vllm_parse):
    # A vLLM release that adds one of these names would make `ds-plugin serve` misread a vLLM
    # flag as SGLang's: fail here first. (Some are prefixes of vLLM flags, e.g. `--ep` of
    # `--eplb-config`, which vLLM's argparse would complete; taking them as SGLang's first is
    # what keeps `--ep 8` from becoming an EPLB config.)
    from ds_plugin._vllm.cli import serve_parser

    options = {o for a in serve_parser()._actions for o in a.option_strings}
    assert not SGLANG_ONLY & options
    assert SGLANG_ONLY <= {n for f in FLAGS for n in f.names}
