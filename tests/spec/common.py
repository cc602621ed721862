"""What the MTP tests share: prompts, one engine run per call, and readings of its results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from ds_plugin.testing.server import child_env

RUNNER = Path(__file__).with_name("mtp_runner.py")

# Dialogues the trained checkpoint knows (long and short answers, a thought, a tool call),
# then two it does not, where it writes text of its own that the draft must still predict.
KNOWN = ["Tell me a story.", "How does speculative decoding work?", "Count from one to ten.",
         "What is the capital of Japan?", "Why is the sky blue? Think first.",
         "What is the weather in Paris?"]
UNKNOWN = ["What is the capital of the Moon?", "Describe a dragon."]


def token_prompts() -> list[list[int]]:
    from ds_plugin.testing.train_tiny import load_tokenizer, prompt_ids

    tok = load_tokenizer()
    return [prompt_ids(tok, text) for text in KNOWN + UNKNOWN]


def run(runs: list[dict], workdir: Path, env: dict | None = None, timeout: int = 1800) -> dict:
    """The engines of `runs`, one after another in one child process (see mtp_runner.py);
    returns {tag: results}."""
    name = "runs"
    req_path, out_path = workdir / f"{name}.json", workdir / f"{name}.pt"
    req_path.write_text(json.dumps({"runs": runs}))
    proc = subprocess.run([sys.executable, str(RUNNER), str(req_path), str(out_path)],
                          env=child_env(env), capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"vLLM run {name} failed (rc={proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return torch.load(out_path)


def proposals(records: list[dict]) -> dict[tuple[str, int], tuple[list[int], list[float]]]:
    """(request, context length) -> (draft tokens, their margins), from a recorded run."""
    out = {}
    for rec in records:
        for req, n, draft, margins in zip(rec["req_ids"], rec["num_tokens"], rec["draft"],
                                          rec["margins"]):
            out[req.split("-")[0], n] = (draft, margins)
    return out


def acceptance(spec: dict) -> dict:
    """vLLM's figures from its counters: acceptance rate = accepted / drafted tokens; mean
    accepted length = 1 + accepted / drafts (the bonus token counted, as vLLM logs it)."""
    drafts, drafted, accepted = (spec["num_drafts"], spec["num_draft_tokens"],
                                 spec["num_accepted_tokens"])
    per_pos = spec.get("num_accepted_tokens_per_pos") or []
    return {"drafts": drafts, "rate": accepted / drafted, "mean_len": 1 + accepted / drafts,
            "per_pos": [round(a / drafts, 3) for a in per_pos]}
