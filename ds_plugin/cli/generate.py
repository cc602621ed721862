"""`ds-plugin generate`: a tiny DeepSeek-format checkpoint (release layout, real tokenizer)."""

from __future__ import annotations

import argparse

TOKENIZERS = ("deepseek-v3", "deepseek-v3.1", "deepseek-r1")
# ds_plugin.testing.checkpoint.QUANTS (not imported here: it pulls torch into every
# `ds-plugin` start; tests/cli/test_cli.py keeps the two equal).
QUANTS = ("bf16", "fp8", "w4afp8", "int8-channel", "int8-block")


def add_parser(sub, name: str) -> None:
    g = sub.add_parser(name, help="write a tiny DeepSeek-format checkpoint (random weights)",
                       description="Write a tiny checkpoint in DeepSeek-V3's release format: "
                       "config.json, safetensors shards with the release's tensor names, the "
                       "real tokenizer and chat template. Output is a pure function of the "
                       "options.")
    g.add_argument("out", help="directory to write (created if missing)")
    g.add_argument("--quant", choices=QUANTS, default="bf16",
                   help="bf16 weights; block-FP8 e4m3 with fp32 128x128 scales as DeepSeek "
                        "ships them; w4afp8 (int4 experts, FP8 elsewhere); or INT8 as "
                        "meituan's R1 checkpoints (per-channel or 128x128 block scales) "
                        "(default: %(default)s)")
    g.add_argument("--tokenizer", choices=TOKENIZERS, default="deepseek-v3",
                   help="which released tokenizer and chat template to include "
                        "(default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="weight seed (default: %(default)s)")
    g.add_argument("--layers", type=int, default=2,
                   help="decoder layers; the first is dense, the rest MoE (default: %(default)s)")
    g.add_argument("--logit-peak", type=float, default=2.0,
                   help="strength of a token->next-token map added to lm_head, so greedy "
                        "decoding is not decided by near-ties; 0 = plain random "
                        "(default: %(default)s)")
    g.add_argument("--no-q-lora", action="store_true",
                   help="q_lora_rank: null (a plain q projection, as in DeepSeek-V2-Lite)")
    g.add_argument("--no-mtp", action="store_true",
                   help="num_nextn_predict_layers: 0 (no MTP layer in the checkpoint)")
    g.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    from ds_plugin.testing.checkpoint import TinyConfig, write_checkpoint

    cfg = TinyConfig(num_hidden_layers=ns.layers, logit_peak=ns.logit_peak,
                     q_lora_rank=None if ns.no_q_lora else 128,
                     num_nextn_predict_layers=0 if ns.no_mtp else 1)
    print(write_checkpoint(ns.out, cfg, quant=ns.quant, tokenizer=ns.tokenizer, seed=ns.seed))
    return 0
