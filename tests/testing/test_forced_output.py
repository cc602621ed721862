"""ds_plugin/testing/forced_output.py: row bookkeeping and forcing (the e2e parser tests
rely on it; this pins the batch-update handling without a server)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from ds_plugin.testing.forced_output import ForcedOutput  # noqa: E402
from tests.helpers.vllm_api import BatchUpdate, MoveDirectionality, SamplingParams  # noqa: E402


def _params(ids=None):
    return SamplingParams(extra_args={"force_ids": ids} if ids is not None else None)


def _update(removed=(), added=(), moved=()):
    return BatchUpdate(batch_size=4, removed=list(removed), added=list(added), moved=list(moved))


def test_forces_by_output_position_and_follows_moves():
    proc = ForcedOutput(None, torch.device("cpu"), False)
    out0, out2 = [], [7]
    proc.update_state(_update(added=[(0, _params([5, 6]), [1], out0), (1, _params(), [1], []),
                                     (2, _params([8, 9]), [1], out2)]))
    logits = torch.zeros(3, 10)
    got = proc.apply(logits.clone()).argmax(-1).tolist()
    assert got[0] == 5 and got[2] == 9  # row 2 already produced one token
    assert torch.equal(proc.apply(logits.clone())[1], logits[1])  # unforced row untouched
    swap = MoveDirectionality.SWAP
    proc.update_state(_update(moved=[(0, 2, swap)]))
    got = proc.apply(torch.zeros(3, 10)).argmax(-1).tolist()
    assert got[0] == 9 and got[2] == 5
    out0.extend([5, 6])  # exhausted: no longer forced
    proc.update_state(_update(removed=[0]))
    assert torch.equal(proc.apply(torch.zeros(3, 10))[2], torch.zeros(10))


@pytest.mark.parametrize("bad", [[-1], ["5"], [True], "5 6", [1.0]])
def test_rejects_bad_ids(bad):
    with pytest.raises(ValueError, match="force_ids"):
        ForcedOutput.validate_params(_params(bad))
