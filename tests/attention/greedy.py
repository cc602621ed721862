"""Greedy completions from a served engine, with each step's top-1/top-2 logprob gap."""

from __future__ import annotations


def greedy(server, prompts, max_tokens) -> tuple[list[list[tuple[str, float]]], list[int]]:
    """Per prompt: [(token, top-1 minus top-2 logprob)] for each step; and the prompt sizes."""
    runs, sizes = [], []
    for prompt in prompts:
        status, body = server.post("/v1/completions", {
            "model": server.model, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0.0, "logprobs": 2, "ignore_eos": True})
        assert status == 200, body
        lp = body["choices"][0]["logprobs"]
        steps = []
        for token, top in zip(lp["tokens"], lp["top_logprobs"]):
            vals = sorted(top.values(), reverse=True)
            steps.append((token, vals[0] - vals[1] if len(vals) > 1 else float("inf")))
        runs.append(steps)
        sizes.append(body["usage"]["prompt_tokens"])
    return runs, sizes


def compare_until_near_tie(got, want, near_tie: float) -> int:
    """Assert equal tokens up to each run's first step whose reference gap is a near tie;
    returns how many steps were compared."""
    compared = 0
    for ours, ref in zip(got, want):
        for (tok, _), (ref_tok, gap) in zip(ours, ref):
            if gap < near_tie:
                break
            assert tok == ref_tok, (ours, ref)
            compared += 1
    return compared
