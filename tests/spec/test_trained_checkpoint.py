"""The trained tiny checkpoint (ds_plugin.testing.train_tiny), without an engine.

What is written is the model that was trained (transformers' DeepseekV3, the tests' fp32
reference, reads the checkpoint and computes the trainer's logits), the model has learnt its
dialogues (every answer token, teacher-forced: measured 100%, 36 of 36 dialogues word for
word), and its MTP layer predicts the next-next token at every draft depth it was trained
for (measured 100%). The engine tests then measure the same through vLLM.
"""

from __future__ import annotations

import pytest
import torch

from ds_plugin.testing import tiny_corpus, tiny_lm, train_tiny



@pytest.fixture(scope="module")
def trained():
    result = train_tiny.trained()
    model = tiny_lm.TinyDeepSeek(train_tiny.CONFIG, len(result["used"]),
                                 train_tiny.CONFIG.vocab_size - len(result["used"]))
    model.load_state_dict(result["state"])
    rows = {tok: r for r, tok in enumerate(result["used"])}
    return model.eval(), rows, result


def test_checkpoint_holds_the_trained_model(trained):
    from tests.model.hf_reference import load_reference

    model, rows, result = trained
    # The checkpoint stores bf16 weights: the trainer's model with its weights so rounded
    # must then compute what transformers computes from the files.
    rounded = tiny_lm.TinyDeepSeek(train_tiny.CONFIG, len(rows), 1)
    rounded.load_state_dict(result["state"])
    rounded.log_other = model.log_other
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.bfloat16().float())
    ref = load_reference(train_tiny.trained_checkpoint("bf16"))
    used = torch.tensor(result["used"])
    for ids, _ in train_tiny.encode_corpus()[:6]:
        with torch.no_grad():
            ours = rounded(torch.tensor([[rows[i] for i in ids]]), 1)[0][0, :, :-1]
            want = ref(torch.tensor([ids])).logits[0][:, used]
        assert (ours - want).abs().max() < 1e-3 * want.abs().max()


def test_model_learnt_its_dialogues_and_mtp_predicts(trained, record_property):
    model, rows, _ = trained
    seqs = train_tiny.encode_corpus()
    assert len(seqs) == len(tiny_corpus.dialogues())
    hits = [0] * train_tiny.DEPTHS
    counts = [0] * train_tiny.DEPTHS
    right = total = exact = 0
    for ids, n_prompt in seqs:
        x = torch.tensor([[rows[i] for i in ids]])
        with torch.no_grad():
            main, drafts = model(x, train_tiny.DEPTHS)
        # Teacher-forced argmax over the answer (where all of it is right: what greedy
        # decoding writes).
        pred = main[0, n_prompt - 1:-1].argmax(-1)
        right += int((pred == x[0, n_prompt:]).sum())
        total += pred.numel()
        exact += torch.equal(pred, x[0, n_prompt:])
        for d, logits in enumerate(drafts):
            pred = logits[0, n_prompt - 2 + d:-2].argmax(-1)
            hits[d] += int((pred == x[0, n_prompt + d:]).sum())
            counts[d] += pred.numel()
    accuracy = [h / c for h, c in zip(hits, counts)]
    record_property("mtp_accuracy_per_depth", accuracy)
    record_property("main_accuracy", right / total)
    print(f"main next-token accuracy {right / total:.3f} ({exact}/{len(seqs)} answers whole); "
          f"MTP next-next-token accuracy per draft depth (fp32, answers): {accuracy}")
    # Measured 100%, 36 of 36 whole, 100% per depth (2026-12-02; LR 5e-3 before reached only
    # 66-89% depending on the CPU). A trainer, export or corpus change that stops the model
    # learning fails here; the floors leave a dialogue or two of slack for another CPU.
    assert right / total >= 0.97 and exact >= len(seqs) - 3
    assert min(accuracy) >= 0.97
