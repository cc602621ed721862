"""`ds-plugin conformance`: check a live OpenAI-compatible DeepSeek server (any engine).

Protocol checks (tool calls, reasoning, thinking switch and budget, streaming) must PASS on
every deployment. Quality (GSM8K) and speed (batch-1 decode, MTP acceptance) are measured
and compared with published gates, whose source each row names. Exit status 1 if any
protocol check FAILs (quality and speed are reported, not enforced, unless --strict).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from ds_plugin.cli.conformance_checks import PROTOCOL_CHECKS, Ctx, Result
from ds_plugin.cli.conformance_perf import check_decode, check_gsm8k
from ds_plugin.cli.http import Client

__all__ = ["run_checks"]

ALL = tuple(f.__name__.removeprefix("check_") for f in PROTOCOL_CHECKS) + ("gsm8k", "decode")


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="check a live OpenAI-compatible DeepSeek server: protocol, "
                                  "GSM8K, decode speed, MTP acceptance",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="model name as the server lists it")
    p.add_argument("--api-key", help="bearer token, if the server wants one")
    p.add_argument("--family", choices=["auto", "v3", "r1", "v31"], default="auto",
                   help="which reasoning checks apply: v3 none, r1 always thinks, v31 has the "
                        "thinking switch (default: guessed from the model name)")
    p.add_argument("--checks", default=",".join(ALL),
                   help=f"comma-separated subset of: {', '.join(ALL)}")
    p.add_argument("--max-tokens", type=int, default=1024,
                   help="max_tokens of protocol requests (R1 thinks first) (default: %(default)s)")
    p.add_argument("--gsm8k-questions", type=int, default=200,
                   help="questions to ask (default: %(default)s; the shipped sample has 20)")
    p.add_argument("--gsm8k-shots", type=int, default=8, help="few-shot examples (max 8)")
    p.add_argument("--gsm8k-max-tokens", type=int, default=256, help="answer length limit")
    p.add_argument("--gsm8k-file", help="GSM8K test.jsonl to read instead of the sample")
    p.add_argument("--gsm8k-fetch", action="store_true",
                   help="download the full GSM8K test set (1319 problems) from GitHub")
    p.add_argument("--parallel", type=int, default=16, help="concurrent GSM8K requests")
    p.add_argument("--decode-tokens", type=int, default=256,
                   help="tokens generated for the batch-1 decode measurement")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a quality or speed check FAILs too")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--test-force-output", choices=["v3", "v31"], metavar="FORMAT",
                   help="TEST ONLY, for ds-plugin's own CI server: make the protocol checks' "
                        "outputs deterministic through the test-only logits processor "
                        "ds_plugin.testing.forced_output (vllm_xargs.force_ids), with tool "
                        "calls in FORMAT. Never use against a real deployment.")
    p.set_defaults(run=run)


def _family(model: str, client: Client) -> str:
    names = [model]
    status, text = client.get("/v1/models")
    if status == 200:
        for m in json.loads(text).get("data", []):
            if m.get("id") == model:
                names.append(str(m.get("root") or ""))
    s = " ".join(names).lower().replace("_", ".")
    if "r1" in s:
        return "r1"
    if "v3.1" in s or "v31" in s or "terminus" in s:
        return "v31"
    return "v3"


def run_checks(base_url: str, model: str, checks: tuple[str, ...] = ALL, family: str = "auto",
               api_key: str | None = None, timeout: float = 600.0, max_tokens: int = 1024,
               gsm8k: dict | None = None, decode_tokens: int = 256,
               force: str | None = None) -> list[Result]:
    client = Client(base_url, api_key, timeout)
    fam = _family(model, client) if family == "auto" else family
    ctx = Ctx(client, model, fam, max_tokens=max_tokens, force=force)
    unknown = set(checks) - set(ALL)
    if unknown:
        raise ValueError(f"--checks: unknown {', '.join(sorted(unknown))}")
    results = []
    for fn in PROTOCOL_CHECKS:
        if fn.__name__.removeprefix("check_") in checks:
            results.append(_guard(fn.__name__.removeprefix("check_"), "protocol", fn, ctx))
    if "gsm8k" in checks:
        results.append(_guard("gsm8k", "quality", check_gsm8k, ctx,
                              **(gsm8k or {"questions": 200})))
    if "decode" in checks:
        try:
            results += list(check_decode(ctx, decode_tokens))
        except Exception as e:  # noqa: BLE001 - a check that cannot run is a FAIL row
            results.append(Result("decode_batch1", "speed", "FAIL", f"{type(e).__name__}: {e}",
                                  "", ""))
    return results


def _guard(name: str, kind: str, fn, *args, **kwargs) -> Result:
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        return Result(name, kind, "FAIL", f"{type(e).__name__}: {e}", "", "")


def run(ns: argparse.Namespace) -> int:
    from ds_plugin.cli.table import render

    gsm = {"questions": ns.gsm8k_questions, "shots": min(8, ns.gsm8k_shots),
           "max_tokens": ns.gsm8k_max_tokens, "parallel": ns.parallel, "path": ns.gsm8k_file,
           "fetch": ns.gsm8k_fetch}
    try:
        results = run_checks(ns.base_url, ns.model, tuple(c.strip() for c in ns.checks.split(",")
                                                          if c.strip()),
                             ns.family, ns.api_key, ns.timeout, ns.max_tokens, gsm,
                             ns.decode_tokens, ns.test_force_output)
    except ValueError as e:
        print(f"ds-plugin conformance: {e}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        sources = list(dict.fromkeys(r.source for r in results if r.source))
        print(render(["check", "kind", "status", "threshold [source]", "measured"],
                     [[r.name, r.kind, r.status,
                       f"{r.threshold} [{sources.index(r.source) + 1}]" if r.source
                       else r.threshold, r.measured] for r in results]))
        print("\nsources:")
        print("\n".join(f"  [{i}] {s}" for i, s in enumerate(sources, 1)))
    enforced = {"protocol"} | ({"quality", "speed"} if ns.strict else set())
    return 1 if any(r.status == "FAIL" and r.kind in enforced for r in results) else 0
