"""Run vLLM engines (LLM API) one after another in one process, optionally with MTP
speculative decoding, and save what the speculative-decoding tests compare.

    python tests/spec/mtp_runner.py REQUEST.json OUT.pt

REQUEST.json: {"runs": [run, ...]}, each run {"tag": str, "model": dir, "prompts": [[token
               ids], ...], "max_tokens": int, "tp": int, "env": {variables for this engine},
               "engine": {extra LLM kwargs, e.g. speculative_config}, "record": bool,
               "logprobs": bool, "ignore_eos": bool}

One process for all runs saves the interpreter and vLLM import per engine; each engine is
shut down before the next starts. A run that replaces a registry entry
(model_class_overrides) must come last: the override stays in this process's registry.

OUT.pt: {tag: result}; per run the greedy continuation per prompt, the classes the worker built (target and draft,
read inside the worker), vLLM's own spec-decode counters (LLM.get_metrics: drafts, draft
tokens, accepted tokens, accepted per position), decode wall time and, with `record`, every
proposal the drafter made: per request and context length, the draft tokens and the top-1
minus top-2 logit margin of each (read from the drafter's compute_logits in the worker).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time


def worker_classes(worker) -> dict:
    runner = worker.model_runner
    drafter = getattr(runner, "drafter", None)
    name = lambda m: f"{type(m).__module__}.{type(m).__qualname__}"  # noqa: E731
    return {"target": name(runner.model),
            "draft": name(drafter.model) if drafter is not None else None}


def install_recorder(worker) -> None:
    """Wrap the drafter's propose/compute_logits to record proposals (the real ones)."""
    runner = worker.model_runner
    drafter, model = runner.drafter, runner.drafter.model
    propose, compute_logits = drafter.propose, model.compute_logits
    state = {"steps": None}
    worker.ds_mtp_records = records = []

    def logits_hook(hidden_states, *args, **kwargs):
        logits = compute_logits(hidden_states, *args, **kwargs)
        if state["steps"] is not None:
            top = logits.float().topk(2, dim=-1)
            state["steps"].append((top.values[:, 0] - top.values[:, 1]).tolist())
        return logits

    def propose_hook(*args, **kwargs):
        state["steps"] = []
        try:
            draft = propose(*args, **kwargs)
        finally:
            steps, state["steps"] = state["steps"], None
        n = draft.shape[0]
        batch = runner.input_batch
        records.append({"req_ids": list(batch.req_ids[:n]),
                        "num_tokens": [int(t) for t in batch.num_tokens_no_spec[:n]],
                        "draft": draft.tolist(),
                        "margins": [[s[r] for s in steps] for r in range(n)]})
        return draft

    drafter.propose = propose_hook
    model.compute_logits = logits_hook


def read_records(worker) -> list:
    return getattr(worker, "ds_mtp_records", [])


def spec_counters(metrics) -> dict:
    out: dict = {}
    for m in metrics:
        if not m.name.startswith("vllm:spec_decode"):
            continue
        key = m.name.removeprefix("vllm:spec_decode_")
        out[key] = list(m.values) if hasattr(m, "values") else m.value
    return out


def _gap(step) -> float:
    top = sorted((lp.logprob for lp in step.values()), reverse=True)
    return top[0] - top[1] if len(top) > 1 else float("inf")


def topology(tp: int, engine: dict) -> dict:
    """One rank: engine core and worker in this process (vLLM's in-process LLM,
    VLLM_ENABLE_V1_MULTIPROCESSING=0 + the uni executor): the same model, compile and
    scheduler as served, without two process spawns and vLLM imports (~20 s a start on
    the CI box). Two ranks need worker processes: vLLM's default multiprocessing. So does
    a run with model_class_overrides: this process's registry has resolved the classes of
    the earlier runs and would keep them (seen: the in-tree draft run built ours)."""
    alone = tp == 1 and "model_class_overrides" not in engine
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if alone else "1"
    return {"distributed_executor_backend": "uni"} if alone else {}


def _run_one(req: dict, mtp_runner, api) -> dict:
    LLM, SamplingParams, TokensPrompt = api
    os.environ.update(req.get("env", {}))
    t0 = time.perf_counter()
    tp = req.get("tp", 1)
    llm = LLM(model=req["model"], tensor_parallel_size=tp, dtype="bfloat16",
              max_model_len=1024, max_num_seqs=8, seed=0, skip_tokenizer_init=True,
              gpu_memory_utilization=req.get("memory_fraction", 0.15),
              disable_log_stats=False, **topology(tp, req.get("engine", {})),
              **req.get("engine", {}))
    startup_s = time.perf_counter() - t0
    try:
        classes = llm.collective_rpc(mtp_runner.worker_classes)
        spec = req.get("engine", {}).get("speculative_config")
        if spec and req.get("record"):
            llm.collective_rpc(mtp_runner.install_recorder)
        prompts = [TokensPrompt(prompt_token_ids=p) for p in req["prompts"]]
        params = SamplingParams(max_tokens=req.get("max_tokens", 32), temperature=0,
                                ignore_eos=req.get("ignore_eos", True),
                                logprobs=2 if req.get("logprobs") else None)
        before = spec_counters(llm.get_metrics()) if spec else {}
        t1 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        decode_s = time.perf_counter() - t1
        after = spec_counters(llm.get_metrics()) if spec else {}
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        # Top-1 minus top-2 log-prob per step (where requested): how firmly each step is decided.
        gaps = [[_gap(step) for step in o.outputs[0].logprobs] if o.outputs[0].logprobs else []
                for o in outs]
        records = (llm.collective_rpc(mtp_runner.read_records)[0]
                   if spec and req.get("record") else [])
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    for key in req.get("env", {}):
        os.environ.pop(key, None)
    return {"classes": classes, "startup_s": startup_s, "decode_s": decode_s,
            "tokens": tokens, "gaps": gaps, "spec": _delta(after, before), "records": records}


def _delta(after: dict, before: dict) -> dict:
    out = {}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, list):
            out[key] = [a - b for a, b in zip(value, old or [0] * len(value))]
        else:
            out[key] = value - (old or 0)
    return out


def main(request_path: str, out_path: str) -> None:
    # collective_rpc ships the functions above to the engine's workers by reference.
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.join(here, "..", "..")]
    from tests.helpers.vllm_api import LLM, SamplingParams, TokensPrompt

    import mtp_runner
    import torch

    results = {}
    for req in json.loads(open(request_path).read())["runs"]:
        results[req["tag"]] = _run_one(req, mtp_runner, (LLM, SamplingParams, TokensPrompt))
        print(f"mtp_runner: {req['tag']} started in {results[req['tag']]['startup_s']:.0f}s, "
              f"decoded in {results[req['tag']]['decode_s']:.1f}s", flush=True)
        torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
