"""SGLang launch flags -> one `Launch` -> `vllm serve` flags. The one translation table.

`ds-plugin serve --from-sglang "python3 -m sglang.launch_server ..."` and `ds-plugin serve`
given SGLang's own flags both go through `translate`; recipes that quote SGLang's published
line are checked against it (tests/recipes). A flag not in FLAGS is refused by name, and so
is a combination vLLM would run differently from SGLang (the message says what to do).

SGLang's parallel flags count GPUs, vLLM's count replicas: `--tp 8 --dp 8
--enable-dp-attention` is 8 GPUs with attention replicated 8 ways, which vLLM writes
`--data-parallel-size 8` (tensor parallel 1 per replica; the MoE layers span all 8).
SGLang's EAGLE/NEXTN speculative decoding of DeepSeek runs its MTP layer; vLLM's is
`--speculative-config '{"method": "mtp", "num_speculative_tokens": N}'` with N = steps,
chain drafting only (topk 1, N + 1 draft tokens).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ds_plugin.recipes.launch import Launch, LaunchError

__all__ = ["FLAGS", "SGLANG_ONLY", "TranslationError", "parse_command", "translate",
           "translate_mixed"]


class TranslationError(LaunchError):
    pass


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    key: str  # where the value lands in the parsed SGLang settings
    kind: Callable[[str], object] | None  # None: a switch without a value
    vllm: str  # what it becomes, for `--help` and the README table


def _int(v: str) -> int:
    return int(v)


FLAGS: tuple[Flag, ...] = (
    Flag(("--model-path", "--model"), "model", str, "positional MODEL"),
    Flag(("--tp", "--tp-size", "--tensor-parallel-size"), "tp", _int,
         "--tensor-parallel-size (÷ dp with --enable-dp-attention)"),
    Flag(("--dp", "--dp-size", "--data-parallel-size"), "dp", _int,
         "--data-parallel-size (needs --enable-dp-attention)"),
    Flag(("--enable-dp-attention",), "dp_attention", None, "tp/dp split as above"),
    Flag(("--ep", "--ep-size", "--expert-parallel-size"), "ep", _int,
         "--enable-expert-parallel (ep = tp only)"),
    Flag(("--enable-ep-moe",), "ep_moe", None, "--enable-expert-parallel"),
    Flag(("--mem-fraction-static",), "mem", float, "--gpu-memory-utilization"),
    Flag(("--tool-call-parser",), "tool", str, "--enable-auto-tool-choice --tool-call-parser"),
    Flag(("--reasoning-parser",), "reasoning", str, "--reasoning-parser"),
    Flag(("--chat-template",), "template", str, "--chat-template"),
    Flag(("--speculative-algorithm",), "spec_algo", str,
         "--speculative-config {\"method\": \"mtp\", ...}"),
    Flag(("--speculative-num-steps",), "spec_steps", _int, "num_speculative_tokens"),
    Flag(("--speculative-eagle-topk",), "spec_topk", _int, "1 only (chain drafting)"),
    Flag(("--speculative-num-draft-tokens",), "spec_draft", _int, "steps + 1 only"),
    Flag(("--dist-timeout",), "dist_timeout", _int, "--distributed-timeout-seconds"),
    Flag(("--trust-remote-code",), "trust", None, "--trust-remote-code"),
    Flag(("--host",), "host", str, "--host"),
    Flag(("--port",), "port", _int, "--port"),
    Flag(("--nnodes",), "nnodes", _int, "--nnodes / --data-parallel-size-local"),
    Flag(("--node-rank",), "node_rank", _int, "the node's line (--node-rank, --headless)"),
    Flag(("--dist-init-addr",), "init_addr", str, "--master-addr/--master-port"),
    Flag(("--quantization",), "quant", str, "--quantization"),
    Flag(("--context-length",), "context", _int, "--max-model-len"),
    Flag(("--served-model-name",), "served", str, "--served-model-name"),
)
_BY_NAME = {n: f for f in FLAGS for n in f.names}
# Flags whose names vLLM's serve parser does not have: in `ds-plugin serve` they can only be
# SGLang's (tests/cli checks vLLM's parser has none of them, not even as a prefix).
SGLANG_ONLY = frozenset({
    "--model-path", "--tp", "--tp-size", "--dp", "--dp-size", "--ep", "--ep-size",
    "--expert-parallel-size", "--enable-dp-attention", "--enable-ep-moe",
    "--mem-fraction-static", "--speculative-algorithm", "--speculative-num-steps",
    "--speculative-eagle-topk", "--speculative-num-draft-tokens", "--dist-timeout",
    "--dist-init-addr", "--context-length",
})
_LAUNCHERS = (("python3", "-m", "sglang.launch_server"), ("python", "-m", "sglang.launch_server"),
              ("sglang", "serve"))
_SPEC_ALGOS = ("EAGLE", "NEXTN")
# SGLang's DeepSeek default when only the algorithm is given (docs/basic_usage/deepseek_v3.md).
DEFAULT_SPEC_STEPS = 3


def parse_command(line: str) -> tuple[dict[str, str], list[str]]:
    """Split "A=1 python3 -m sglang.launch_server --flags" into (env, flag argv)."""
    words = shlex.split(line)
    env: dict[str, str] = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    for launcher in _LAUNCHERS:
        if tuple(words[:len(launcher)]) == launcher:
            return env, words[len(launcher):]
    if words and not words[0].startswith("-"):
        raise TranslationError(f"{words[0]!r}: expected `python3 -m sglang.launch_server ...` "
                               "(or just its flags)")
    return env, words


def _parse(argv: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        name, eq, inline = word.partition("=")
        flag = _BY_NAME.get(name)
        if flag is None:
            what = "positional argument" if not word.startswith("-") else "SGLang flag"
            raise TranslationError(f"{name}: {what} with no vLLM mapping in ds-plugin's table "
                                   "(ds_plugin/recipes/sglang.py); drop it, or give vLLM's "
                                   "equivalent after the translated flags")
        if flag.key in out:
            raise TranslationError(f"{name}: given twice")
        if flag.kind is None:
            if eq:
                raise TranslationError(f"{name}: a switch, takes no value")
            out[flag.key] = True
            i += 1
            continue
        if eq:
            raw = inline
            i += 1
        elif i + 1 < len(argv):
            raw = argv[i + 1]
            i += 2
        else:
            raise TranslationError(f"{name}: needs a value")
        try:
            out[flag.key] = flag.kind(raw)
        except ValueError:
            raise TranslationError(f"{name}: bad value {raw!r}") from None
    return out


def _parallel(s: dict[str, object]) -> tuple[int, int, bool]:
    tp, dp = int(s.get("tp", 1)), int(s.get("dp", 1))
    if s.get("dp_attention"):
        if dp < 2:
            raise TranslationError("--enable-dp-attention: needs --dp 2 or more")
        if tp % dp:
            raise TranslationError(f"--enable-dp-attention: --tp {tp} is the GPU count and "
                                   f"must be a multiple of --dp {dp}")
        tp_v, dp_v = tp // dp, dp
    elif dp > 1:
        raise TranslationError(
            f"--dp {dp}: without --enable-dp-attention SGLang runs {dp} independent replicas "
            "behind its router; vLLM's --data-parallel-size couples the MoE layers of its "
            f"replicas instead. Run {dp} `ds-plugin serve` behind a load balancer, or add "
            "--enable-dp-attention")
    else:
        tp_v, dp_v = tp, 1
    gpus = tp_v * dp_v
    ep = int(s["ep"]) if "ep" in s else (gpus if s.get("ep_moe") else 1)
    if ep not in (1, gpus):
        raise TranslationError(f"--ep-size {ep}: vLLM's expert parallelism spans all {gpus} "
                               f"GPUs of the launch, so only --ep-size 1 or {gpus} maps")
    return tp_v, dp_v, ep > 1


def _speculative(s: dict[str, object]) -> int | None:
    algo = s.get("spec_algo")
    if algo is None:
        for key, name in (("spec_steps", "--speculative-num-steps"),
                          ("spec_topk", "--speculative-eagle-topk"),
                          ("spec_draft", "--speculative-num-draft-tokens")):
            if key in s:
                raise TranslationError(f"{name}: needs --speculative-algorithm EAGLE or NEXTN")
        return None
    if str(algo).upper() not in _SPEC_ALGOS:
        raise TranslationError(f"--speculative-algorithm {algo}: only EAGLE/NEXTN (DeepSeek's "
                               "MTP layer) map to vLLM's method \"mtp\"")
    topk = int(s.get("spec_topk", 1))
    if topk != 1:
        raise TranslationError(f"--speculative-eagle-topk {topk}: tree drafting (topk > 1) has "
                               "no vLLM equivalent; vLLM's MTP drafts one chain (topk 1)")
    steps = s.get("spec_steps")
    draft = s.get("spec_draft")
    if steps is None:
        steps = int(draft) - 1 if draft is not None else DEFAULT_SPEC_STEPS
    steps = int(steps)
    if steps < 1:
        raise TranslationError(f"--speculative-num-steps {steps}: must be 1 or more")
    if draft is not None and int(draft) != steps + 1:
        raise TranslationError(f"--speculative-num-draft-tokens {draft}: with topk 1 a chain of "
                               f"{steps} steps verifies {steps + 1} tokens; give {steps + 1}")
    return steps


def _template(path: str, notes: list[str]) -> str:
    # SGLang's docs point into its repository (./examples/chat_template/...); ds-plugin
    # ships the DeepSeek ones under the same file names.
    if Path(path).exists():
        return path
    from ds_plugin.parsers.templates import TEMPLATES, template_path

    for name in TEMPLATES:
        if Path(path).name == f"tool_chat_template_{name}.jinja":
            notes.append(f"--chat-template {path}: not found here; using ds-plugin's "
                         f"{name} template")
            return str(template_path(name))
    return path


def translate(argv: list[str], env: dict[str, str] | None = None,
              model: str | None = None) -> Launch:
    """SGLang flags (no launcher words) -> Launch. `model` is a positional MODEL given
    beside them (`ds-plugin serve MODEL --tp 8`)."""
    s = _parse(argv)
    if model is not None and "model" in s:
        raise TranslationError(f"--model-path: given beside the positional model {model!r}")
    model = model if model is not None else s.get("model")
    if not model:
        raise TranslationError("--model-path: missing (the model to serve)")
    tp, dp, ep = _parallel(s)
    nodes = int(s.get("nnodes", 1))
    addr, port = str(s.get("init_addr", "")), None
    if addr:
        host, _, p = addr.rpartition(":")
        if not host or not p.isdigit():
            raise TranslationError(f"--dist-init-addr {addr}: expected HOST:PORT")
        addr, port = host, int(p)
    notes: list[str] = []
    kw: dict[str, object] = {}
    if addr:
        kw.update(master_addr=addr, master_port=port)
    if "template" in s:
        kw["chat_template"] = _template(str(s["template"]), notes)
    rank = int(s.get("node_rank", 0))
    if not 0 <= rank < nodes:
        raise TranslationError(f"--node-rank {rank}: outside 0..{nodes - 1}")
    return Launch(
        model=str(model), tp=tp, dp=dp, ep=ep, nodes=nodes, node_rank=rank,
        gpu_memory_utilization=s.get("mem"), tool_parser=s.get("tool"),
        reasoning_parser=s.get("reasoning"), mtp_tokens=_speculative(s),
        quantization=s.get("quant"), max_model_len=s.get("context"),
        served_model_name=s.get("served"), dist_timeout=s.get("dist_timeout"),
        trust_remote_code=bool(s.get("trust")), host=s.get("host"), port=s.get("port"),
        env=tuple(sorted((env or {}).items())), notes=tuple(notes), **kw)


def translate_mixed(argv: list[str]) -> tuple[list[str], list[str]]:
    """`ds-plugin serve` arguments with SGLang flags among vLLM's -> (vLLM argv, notes).

    Only SGLANG_ONLY flags (and their values) are taken as SGLang's; the rest is vLLM's and
    passes through unchanged after the translated flags. Without any SGLang-only flag the
    argv is returned as is.
    """
    sgl, rest, i = [], [], 0
    while i < len(argv):
        name = argv[i].partition("=")[0]
        if name in SGLANG_ONLY:
            flag = _BY_NAME[name]
            takes = flag.kind is not None and "=" not in argv[i]
            sgl += argv[i:i + 1 + takes]
            i += 1 + takes
        else:
            rest.append(argv[i])
            i += 1
    if not sgl:
        return list(argv), []
    s = _parse(sgl)
    if s.get("dp_attention"):
        clash = [w for w in rest if w.partition("=")[0] in
                 ("-tp", "--tensor-parallel-size", "-dp", "--data-parallel-size")]
        if clash:
            raise TranslationError(f"{clash[0]}: with --enable-dp-attention give the GPU count "
                                   "as SGLang does (--tp/--dp), not vLLM's flag")
    if "spec_algo" in s and any(w.partition("=")[0] == "--speculative-config" for w in rest):
        raise TranslationError("--speculative-config: given beside SGLang's --speculative-* flags")
    model = None
    if "model" in s and rest and not rest[0].startswith("-"):
        raise TranslationError(f"--model-path: given beside the positional model {rest[0]!r}")
    if "model" not in s:
        if not rest or rest[0].startswith("-"):
            raise TranslationError("--model-path: missing (the model to serve)")
        model, rest = rest[0], rest[1:]
    launch = translate(sgl, model=model)
    return launch.argv() + rest, list(launch.notes)
