"""The quality and speed checks of `ds-plugin conformance`: GSM8K few-shot accuracy,
batch-1 decode speed and TTFT, MTP acceptance from /metrics.

Thresholds are the published gates they are named after (SGLang's 8xH200 CI for DeepSeek);
on other hardware or smaller models the measured value is what matters, and FAIL only says
it is below that gate.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ds_plugin.cli.conformance_checks import Ctx, Result

__all__ = ["check_gsm8k", "check_decode", "spec_metrics", "load_questions"]

DATA = Path(__file__).resolve().parent / "data"
GSM8K_URL = ("https://raw.githubusercontent.com/openai/grade-school-math/master/"
             "grade_school_math/data/test.jsonl")
SGL_BASIC = "SGLang CI, DeepSeek-V3-0324 on 8xH200 TP8 (test_deepseek_v3_basic.py)"
SGL_MTP = "SGLang CI, DeepSeek-V3-0324 on 8xH200 TP8, EAGLE 3/1/4 (test_deepseek_v3_mtp.py)"
GSM8K_GATE = 0.935
DECODE_GATE, DECODE_GATE_MTP, ACCEPT_GATE = 75.0, 130.0, 2.8


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_questions(path: str | None = None, fetch: bool = False) -> tuple[list[dict], str]:
    """GSM8K test problems: a file, the full set fetched from GitHub, or the shipped sample."""
    if path:
        return _rows(Path(path).read_text()), path
    if fetch:
        with urllib.request.urlopen(GSM8K_URL, timeout=60) as r:
            return _rows(r.read().decode()), GSM8K_URL
    return _rows((DATA / "gsm8k_test_sample.jsonl").read_text()), "shipped 20-problem sample"


def _clean(answer: str) -> str:
    return re.sub(r"<<[^>]*>>", "", answer)  # GSM8K's calculator annotations


def _label(answer: str) -> float:
    return float(answer.split("####")[-1].strip().replace(",", ""))


def _predicted(text: str) -> float | None:
    m = re.search(r"####\s*(-?[\d,]*\.?\d+)", text)
    nums = [m.group(1)] if m else re.findall(r"-?[\d,]*\.?\d+", text)
    for n in reversed(nums):
        try:
            return float(n.replace(",", ""))
        except ValueError:
            continue
    return None


def check_gsm8k(ctx: Ctx, questions: int, shots: int = 8, max_tokens: int = 256,
                parallel: int = 16, path: str | None = None, fetch: bool = False) -> Result:
    name = "gsm8k"
    problems, where = load_questions(path, fetch)
    problems = problems[:questions]
    examples = _rows((DATA / "gsm8k_train_shots.jsonl").read_text())[:shots]
    prefix = "".join(f"Question: {e['question']}\nAnswer: {_clean(e['answer'])}\n\n"
                     for e in examples)

    def one(p: dict) -> bool:
        status, resp = ctx.client.post("/v1/completions", {
            "model": ctx.model, "prompt": f"{prefix}Question: {p['question']}\nAnswer:",
            "max_tokens": max_tokens, "temperature": 0, "stop": ["Question:", "\n\n\n"]})
        if status != 200:
            raise RuntimeError(f"/v1/completions failed ({status}): {str(resp)[:200]}")
        got = _predicted(resp["choices"][0]["text"])
        return got is not None and abs(got - _label(p["answer"])) < 1e-6

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        correct = sum(pool.map(one, problems))
    acc = correct / max(1, len(problems))
    return Result(name, "quality", "PASS" if acc > GSM8K_GATE else "FAIL",
                  f"{acc:.3f} ({correct}/{len(problems)}, {shots}-shot, {where})",
                  f"> {GSM8K_GATE}", SGL_BASIC)


def spec_metrics(ctx: Ctx) -> dict[str, float] | None:
    """vLLM's speculative-decoding counters from /metrics (summed over labels), or None."""
    status, text = ctx.client.get("/metrics")
    if status != 200:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(vllm:spec_decode_num_(?:drafts|draft_tokens|accepted_tokens))_total"
                     r"(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out or None


def check_decode(ctx: Ctx, tokens: int = 256) -> tuple[Result, Result]:
    """(batch-1 decode speed with TTFT, MTP mean acceptance length over the same request)."""
    before = spec_metrics(ctx)
    body = {"model": ctx.model, "temperature": 0, "max_tokens": tokens, "ignore_eos": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Count from 1 to 1000, comma-separated."}]}
    try:
        s = ctx.client.stream("/v1/chat/completions", body)
    except urllib.error.HTTPError:
        body.pop("ignore_eos")  # a server without the vLLM/SGLang extension
        s = ctx.client.stream("/v1/chat/completions", body)
    after = spec_metrics(ctx)
    usage = next((e["usage"] for e in reversed(s.events) if e.get("usage")), None)
    n = usage["completion_tokens"] if usage else None
    mtp = before is not None and after is not None
    gate = DECODE_GATE_MTP if mtp else DECODE_GATE
    if s.first is None or not n or n < 2:
        speed = Result("decode_batch1", "speed", "FAIL", f"{n} tokens streamed", f"> {gate} tok/s",
                       SGL_MTP if mtp else SGL_BASIC)
    else:
        rate = (n - 1) / max(s.last - s.first, 1e-9)
        speed = Result("decode_batch1", "speed", "PASS" if rate > gate else "FAIL",
                       f"{rate:.1f} tok/s over {n} tokens; TTFT {1e3 * (s.first - s.sent):.0f} ms",
                       f"> {gate:g} tok/s{' (MTP on)' if mtp else ''}",
                       SGL_MTP if mtp else SGL_BASIC)
    if not mtp:
        accept = Result("mtp_acceptance", "speed", "SKIP",
                        "no vllm:spec_decode_* counters at /metrics (speculative decoding off?)",
                        f"> {ACCEPT_GATE}", SGL_MTP)
    else:
        drafts = after.get("vllm:spec_decode_num_drafts", 0) - before.get(
            "vllm:spec_decode_num_drafts", 0)
        acc = after.get("vllm:spec_decode_num_accepted_tokens", 0) - before.get(
            "vllm:spec_decode_num_accepted_tokens", 0)
        length = 1 + acc / drafts if drafts else 0.0
        accept = Result("mtp_acceptance", "speed", "PASS" if length > ACCEPT_GATE else "FAIL",
                        f"mean accepted length {length:.2f} ({int(acc)} tokens over "
                        f"{int(drafts)} drafts)", f"> {ACCEPT_GATE}", SGL_MTP)
    return speed, accept

