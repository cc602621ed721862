"""Train the tiny DeepSeek-V3 checkpoint whose MTP layer predicts (deterministic, cached).

    python -m ds_plugin.testing.train_tiny OUT_DIR [--quant fp8] [--tokenizer deepseek-v3]
    write_trained_checkpoint(path, quant="bf16")        # the demo: a checkpoint at `path`
    trained_checkpoint(quant="bf16")                     # the tests: one cached copy

A random checkpoint's MTP layer accepts almost no drafts, which tests nothing about
speculative decoding. This trains the main model and its MTP layer jointly (ds_plugin.testing
.tiny_lm) on the dialogues of ds_plugin.testing.tiny_corpus, rendered with the real
DeepSeek-V3 chat template and tokenizer: the model answers them word for word, and the MTP
layer, drafting 1..DEPTHS tokens with the one layer as vLLM's proposer runs it, predicts
what the model will say. Training is a fixed number of Adam steps in a seeded order from a
fixed seed on fixed threads; the result is cached in ~/.cache/ds-plugin (or $DS_PLUGIN_CACHE) under
a hash of the sources it depends on, so only the first call trains.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ds_plugin.testing import tiny_corpus, tiny_lm
from ds_plugin.testing.checkpoint import (TinyConfig, tensor_specs, write_checkpoint,
                                          write_tokenizer)

# TinyConfig's shapes (hidden 256, 2 layers, MLA with the release's 512 + 64 latent, dense
# layer 0, MoE after and in the MTP layer), plain RoPE. Experts 256 wide, so each of two
# tensor-parallel ranks holds whole 128-blocks of them (block-FP8 needs that; the release's
# 2048 at TP8 is 256 too).
CONFIG = TinyConfig(moe_intermediate_size=256, rope_scaling=None, max_position_embeddings=4096,
                    n_shards=1)
SEED = 0
EPOCHS = 100        # passes over the corpus, one Adam step per length bucket
DEPTHS = 3          # draft steps the MTP layer is trained for (num_speculative_tokens 1..3)
MTP_WEIGHT = 0.3
LR = 2e-3           # 5e-3 (earlier) oscillated: 66-89% learnt, by CPU; 2e-3 fits it all by epoch ~80
THREADS = 2
EOS = 1             # <｜end▁of▁sentence｜>


def cache_root() -> Path:
    return Path(os.environ.get("DS_PLUGIN_CACHE") or Path.home() / ".cache" / "ds-plugin")


def cache_key() -> str:
    """Hash of everything the trained weights depend on."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("train_tiny.py", "tiny_lm.py", "tiny_corpus.py"):
        h.update((here / name).read_bytes())
    h.update(repr((CONFIG, SEED, EPOCHS, DEPTHS, MTP_WEIGHT, LR, THREADS, torch.__version__)).encode())
    return h.hexdigest()[:16]


def load_tokenizer(tokenizer: str = "deepseek-v3"):
    """The real DeepSeek tokenizer, loaded as vLLM loads it with ds-plugin (byte-level BPE)."""
    from ds_plugin.patches.tokenizer import load_byte_level

    with tempfile.TemporaryDirectory() as tmp:
        return load_byte_level(write_tokenizer(tmp, tokenizer))


def prompt_ids(tok, user: str) -> list[int]:
    """A one-turn chat prompt as the server renders it: template text, then token ids."""
    text = tok.apply_chat_template([{"role": "user", "content": user}],
                                   add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def encode_corpus(tokenizer: str = "deepseek-v3") -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per dialogue: the chat-rendered prompt, then the answer."""
    tok = load_tokenizer(tokenizer)
    out = []
    for user, answer in tiny_corpus.dialogues():
        ids = prompt_ids(tok, user)
        out.append((ids + tok(answer, add_special_tokens=False)["input_ids"] + [EOS], len(ids)))
    return out


def _batches(seqs, rows: dict[int, int]):
    """Length-bucketed batches: (row ids [B, T], targets [B, T] with -100 off the answers)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out, size = [], 4
    for start in range(0, len(order), size):
        group = [seqs[i] for i in order[start:start + size]]
        t = max(len(ids) for ids, _ in group)
        x = torch.zeros(len(group), t, dtype=torch.long)
        y = torch.full((len(group), t), -100, dtype=torch.long)
        for b, (ids, n_prompt) in enumerate(group):
            r = torch.tensor([rows[i] for i in ids])
            x[b, :len(ids)] = r
            y[b, n_prompt:len(ids)] = r[n_prompt:]
        out.append((x, y))
    return out


def _loss(model, x, y):
    main, drafts = model(x, DEPTHS)
    v = main.shape[-1]
    losses = [F.cross_entropy(main[:, :-1].reshape(-1, v), y[:, 1:].reshape(-1))]
    for d, logits in enumerate(drafts):
        # Row p of depth d predicts token p + 2; rows p < d have no chain behind them.
        tgt = y[:, 2:].clone()
        tgt[:, :d] = -100
        losses.append(F.cross_entropy(logits[:, :-2].reshape(-1, v), tgt.reshape(-1)))
    return losses


def train(log=print) -> dict:
    """Train from scratch; returns the reduced weights and the log (what the cache holds)."""
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)
    # Gradients of a 0.02-scale init underflow to denormals, which CPUs handle ~10x slower.
    torch.set_flush_denormal(True)
    seqs = encode_corpus()
    used = sorted({i for ids, _ in seqs for i in ids})
    rows = {tok: r for r, tok in enumerate(used)}
    model = tiny_lm.TinyDeepSeek(CONFIG, len(used), CONFIG.vocab_size - len(used))
    batches = _batches(seqs, rows)
    steps = EPOCHS * len(batches)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    moes = [m for m in model.modules() if isinstance(m, tiny_lm.MoE)]
    order = torch.Generator().manual_seed(SEED)
    history, t0 = [], time.perf_counter()
    for epoch in range(EPOCHS):
        total = [0.0] * (DEPTHS + 1)
        for b in torch.randperm(len(batches), generator=order).tolist():
            parts = _loss(model, *batches[b])
            opt.zero_grad()
            # DeepSeek-V3's weighting (paper §2.2): the MTP losses share lambda = 0.3.
            (parts[0] + MTP_WEIGHT / DEPTHS * sum(parts[1:])).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            for m in moes:
                m.balance(1e-3)
            total = [a + float(p.detach()) / len(batches) for a, p in zip(total, parts)]
        if epoch % 10 == 0 or epoch == EPOCHS - 1:
            history.append([epoch] + [round(v, 4) for v in total])
            log(f"epoch {epoch:4d}  loss main {total[0]:.4f}  mtp "
                + " ".join(f"{v:.4f}" for v in total[1:]) + f"  ({time.perf_counter() - t0:.0f}s)")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"state": state, "used": used, "history": history,
            "train_s": time.perf_counter() - t0, "tokens": sum(len(s) for s, _ in seqs)}


def trained(log=print) -> dict:
    """The cached training result, training first when the cache lacks it."""
    path = cache_root() / f"tiny-mtp-{cache_key()}.pt"
    if path.is_file():
        return torch.load(path)
    log(f"training the tiny MTP checkpoint ({EPOCHS} epochs; cached at {path})")
    result = train(log)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(result, tmp)
    tmp.replace(path)
    return result


def release_weights(result: dict) -> dict[str, torch.Tensor]:
    """The trained model as fp32 tensors under the release's names, full vocabulary."""
    c, s, used = CONFIG, result["state"], torch.tensor(result["used"])
    n, mtp = c.num_hidden_layers, f"model.layers.{c.num_hidden_layers}."
    # Unseen ids read the mean embedding; their head rows are the trained "other" row.
    embed = s["embed"][:-1].mean(0).repeat(c.vocab_size, 1)
    embed[used] = s["embed"][:-1]
    head = s["head"][-1].repeat(c.vocab_size, 1)
    head[used] = s["head"][:-1]
    out = {"model.embed_tokens.weight": embed, "lm_head.weight": head,
           "model.norm.weight": s["norm.weight"], mtp + "embed_tokens.weight": embed,
           mtp + "shared_head.head.weight": head,
           mtp + "shared_head.norm.weight": s["mtp.shared_head_norm.weight"]}
    for part in ("enorm.weight", "hnorm.weight", "eh_proj.weight"):
        out[mtp + part] = s[f"mtp.{part}"]
    blocks = [(f"layers.{i}.", f"model.layers.{i}.") for i in range(n)] + [("mtp.block.", mtp)]
    for src, dst in blocks:
        for key, t in s.items():
            if not key.startswith(src):
                continue
            rest = key[len(src):]
            for ours, theirs in (("w_gate", "gate_proj"), ("w_up", "up_proj"),
                                 ("w_down", "down_proj")):
                if rest == f"mlp.{ours}":
                    for e in range(c.n_routed_experts):
                        out[f"{dst}mlp.experts.{e}.{theirs}.weight"] = t[e]
                    break
            else:
                out[dst + rest.replace("mlp.e_score", "mlp.gate.e_score")] = t
    want = {name for name, _, _ in tensor_specs(c)}
    if set(out) != want:
        raise RuntimeError(f"export names differ from the release layout: "
                           f"{sorted(set(out) ^ want)[:5]}")
    return {k: v.float().contiguous() for k, v in out.items()}


def write_trained_checkpoint(path: str | Path, quant: str = "bf16",
                             tokenizer: str = "deepseek-v3", log=print) -> Path:
    """Write the trained tiny checkpoint (training once, then from the cache)."""
    return write_checkpoint(path, CONFIG, quant=quant, tokenizer=tokenizer,
                            weights=release_weights(trained(log)))


def trained_checkpoint(quant: str = "bf16", tokenizer: str = "deepseek-v3", log=print) -> Path:
    """The trained checkpoint in the cache (written once per quant and tokenizer). A fixed
    path lets vLLM reuse its compile cache for it across runs."""
    path = cache_root() / f"tiny-mtp-{cache_key()}-{quant}-{tokenizer}"
    if (path / "config.json").is_file():
        return path
    cache_root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=cache_root()))
    write_trained_checkpoint(tmp, quant, tokenizer, log)
    try:
        tmp.rename(path)
    except OSError:  # another process finished first; theirs is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--quant", choices=["bf16", "fp8"], default="bf16")
    p.add_argument("--tokenizer", default="deepseek-v3")
    ns = p.parse_args(argv)
    print(write_trained_checkpoint(ns.out, ns.quant, ns.tokenizer))
    print(json.dumps({"cache": str(cache_root()), "key": cache_key()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
