"""Run one vLLM engine on a checkpoint and save what the conformance tests compare.

    python tests/model/vllm_runner.py REQUEST.json OUT.pt

REQUEST.json: {"model": dir, "prompts": [[token ids], ...], "max_tokens": int,
               "tp": int, "prompt_logits": bool, "engine": {extra LLM kwargs}}

OUT.pt holds, per prompt: the raw prompt logits vLLM returned through `prompt_logprobs`
(`logprobs_mode="raw_logits"`, full vocabulary, fp32, row i = logits after token i), the
greedy continuation, and the model class that actually ran, read from the engine's worker.
One engine start per call: the tests batch everything for a checkpoint into it.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch


def model_class(model) -> str:
    """Runs inside the worker (via LLM.apply_model): the class vLLM instantiated."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _logits_rows(entries, vocab: int) -> torch.Tensor:
    rows = torch.full((len(entries), vocab), float("nan"))
    for i, entry in enumerate(entries):
        ids = torch.tensor(list(entry.keys()))
        rows[i, ids] = torch.tensor([lp.logprob for lp in entry.values()])
    return rows


def main(request_path: str, out_path: str) -> None:
    # apply_model ships `model_class` to the engine's worker by reference (pickle).
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.join(here, "..", "..")]
    from tests.helpers.vllm_api import LLM, SamplingParams, TokensPrompt

    req = json.loads(open(request_path).read())
    tp = req.get("tp", 1)
    # One rank: engine core and worker in this process (vLLM's in-process LLM): the same
    # model, compile and scheduler as served, without two process spawns and vLLM imports
    # (~20 s a start on the CI box). The servers of tests/e2e run vLLM's process layout.
    topology = {"distributed_executor_backend": "uni"} if tp == 1 else {}
    if tp == 1:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    t0 = time.perf_counter()
    llm = LLM(model=req["model"], tensor_parallel_size=tp, dtype="bfloat16",
              max_model_len=512, max_num_seqs=8, seed=0, max_logprobs=-1,
              gpu_memory_utilization=req.get("memory_fraction", 0.15),
              logprobs_mode="raw_logits", **topology, **req.get("engine", {}))
    startup_s = time.perf_counter() - t0
    import vllm_runner

    classes = llm.apply_model(vllm_runner.model_class)
    vocab = llm.llm_engine.model_config.get_vocab_size()
    prompts = [TokensPrompt(prompt_token_ids=p) for p in req["prompts"]]
    result: dict = {"classes": classes, "startup_s": startup_s, "prompt_logits": [],
                    "tokens": []}
    if req.get("prompt_logits", True):
        outs = llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0,
                                                    prompt_logprobs=-1, logprobs=-1))
        for o in outs:
            # prompt_logprobs[0] is None (no context); rows 1.. score tokens 1..; the
            # sampled token's logprobs give the row after the last prompt token.
            rows = o.prompt_logprobs[1:] + [o.outputs[0].logprobs[0]]
            result["prompt_logits"].append(_logits_rows(rows, vocab))
    t1 = time.perf_counter()
    outs = llm.generate(prompts, SamplingParams(max_tokens=req.get("max_tokens", 32),
                                                temperature=0, ignore_eos=True))
    result["decode_s"] = time.perf_counter() - t1
    result["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
    torch.save(result, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
