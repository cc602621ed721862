"""Same corpus, ds-plugin's DeepSeek parsers vs vLLM 0.32's in-tree ones, both modes.

Each case of tests/helpers/parser_corpus.py goes through vLLM's own serving parser
(DelegatingParser), composed once with our classes and once with vLLM's. A case passes
non-streaming when the response equals the hand-written expectation; it passes
streaming when every chunking (one character, one real token, three random splits, the
whole output at once) reassembles to the expectation with no protocol problem (a call
without id/name in its first delta, a renamed call, a placeholder "{}"). An exception
counts as a failure. A second table times one call with 125 KB of arguments streamed
token by token. Pure-CPU parsing: no device, no model.

    python benchmarks/parsers_side_by_side.py [-v]
"""

from __future__ import annotations

import argparse
import logging
import time

from ds_plugin.parsers import vllm_reasoning_parser as ours_r
from ds_plugin.parsers import vllm_tool_parser as ours_t
from tests.helpers.parser_corpus import cases, chunkings, load_tokenizer
from tests.helpers.vllm_probe import intree_deepseek_parsers
from tests.helpers.parser_replay import (compose, expected, run_non_streaming,
                                             run_streaming, tokenizer_for)


def parser_sets():
    vllm = intree_deepseek_parsers()
    return {
        "ds-plugin": {"v3": ours_t.DeepSeekV3ToolParser, "v31": ours_t.DeepSeekV31ToolParser,
                      "r1": ours_r.DeepSeekR1ReasoningParser,
                      "v3r": ours_r.DeepSeekV3ReasoningParser},
        "vllm-0.32": {"v3": vllm["deepseek_v3"], "v31": vllm["deepseek_v31"],
                      "r1": vllm["deepseek_r1"], "v3r": vllm["deepseek_v3_reasoning"]},
    }


def compose_for(case, classes):
    tool = classes[case.fmt]
    if case.reasoning is None:
        return compose(tool, None)
    return compose(tool, classes["r1" if case.fmt == "v3" else "v3r"])


def check(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a crash is a failed case, reported
        return f"{type(e).__name__}: {e}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-v", action="store_true", help="list each failing case")
    verbose = ap.parse_args().v
    logging.getLogger("vllm").setLevel(logging.CRITICAL)
    logging.getLogger("ds_plugin").setLevel(logging.CRITICAL)
    corpus = cases()
    kinds = ("tokens", "whole", "chars", "random")
    rows = []
    for label, classes in parser_sets().items():
        t0 = time.perf_counter()
        ok = dict.fromkeys(("non-streaming", *kinds, "all splits"), 0)
        for case in corpus:
            want = expected(case).key()
            parser_cls = compose_for(case, classes)
            got = check(lambda: run_non_streaming(parser_cls, case).key())
            if got == want:
                ok["non-streaming"] += 1
            elif verbose:
                print(f"  {label} non-streaming FAIL {case.fmt}-{case.name}: {got!r}")
            bad = set()
            for how, chunks in chunkings(case.text, load_tokenizer(tokenizer_for(case))).items():
                out = check(lambda: run_streaming(parser_cls, case, chunks))
                if isinstance(out, str) or out.problems or out.key() != want:
                    bad.add(how.rstrip("0123456789"))
            for kind in kinds:
                ok[kind] += kind not in bad
            ok["all splits"] += not bad
            if bad and verbose:
                print(f"  {label} streaming FAIL {case.fmt}-{case.name}: {sorted(bad)}")
        rows.append((label, ok, time.perf_counter() - t0))
    n = len(corpus)
    print(f"\n{n} cases through vLLM's DelegatingParser; streaming columns: pass rate per "
          "chunking (random = all of 3 seeds)\n")
    print(f"{'parsers':<11}" + "".join(f"{k:>15}" for k in rows[0][1]) + f"{'seconds':>9}")
    for label, ok, secs in rows:
        cells = "".join(f"{v:>5}/{n} {100 * v / n:5.1f}%" for v in ok.values())
        print(f"{label:<11}{cells}{secs:>9.1f}")
    long_arguments()


def long_arguments() -> None:
    """One call with 125 KB of arguments streamed one real token at a time."""
    import json

    from tests.helpers.parser_corpus import B, E, Case, chunk_tokens, v3_call

    args = json.dumps({"rows": [{"k": i, "v": "x" * 20} for i in range(3000)]})
    case = Case("long", "v3", B + v3_call("get_weather", args) + E, "",
                (("get_weather", args),))
    chunks = chunk_tokens(case.text, load_tokenizer(tokenizer_for(case)))
    print(f"\nlong arguments: {len(case.text) / 1e3:.0f} KB in {len(chunks)} token deltas, "
          "streamed through DelegatingParser")
    print(f"{'parsers':<11}{'correct':>9}{'seconds':>9}{'us/delta':>10}")
    for label, classes in parser_sets().items():
        t0 = time.perf_counter()
        out = check(lambda: run_streaming(compose(classes["v3"], None), case, chunks))
        secs = time.perf_counter() - t0
        ok = not isinstance(out, str) and out.key() == expected(case).key()
        print(f"{label:<11}{str(ok):>9}{secs:>9.2f}{secs / len(chunks) * 1e6:>10.1f}")


if __name__ == "__main__":
    main()
