"""The MLA decode family without a kernel run: declarations, refusals, selection, plan metadata.

Runs on any machine; FlashInfer's metadata check runs where flashinfer imports (it does on a
CPU with `nvidia-ml-py` beside it).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from ds_plugin.attention import mla_family
from ds_plugin.attention.mla_family import (ADAPTERS, DEFAULTS, DecodeSpec,
                                            MLAKernelUnavailable, adapter_class, choose)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def spec(**kw) -> DecodeSpec:
    base = dict(num_heads=16, scale=576**-0.5, page_size=64, kv_dtype="bf16", device=DEVICE)
    base.update(kw)
    return DecodeSpec(**base)


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv("DS_PLUGIN_MLA_KERNEL", raising=False)
    monkeypatch.delenv("DS_PLUGIN_TRITON_ON_CPU", raising=False)


def _library_here(cls) -> bool:
    if DEVICE.type not in cls.caps.devices:
        return False
    if cls.caps.library is None:
        return True
    try:
        importlib.import_module(cls.caps.library)
    except Exception:  # noqa: BLE001
        return False
    return True


def test_every_adapter_declares_itself_and_imports_without_its_library():
    # Importing an adapter module never imports its kernel library, nor vLLM.
    for name in ADAPTERS:
        cls = adapter_class(name)
        assert cls.name == name
        assert cls.caps.kv_dtypes <= {"bf16", "fp16", "fp32", "fp8"}
        assert cls.caps.pin
    rows = {(r.platform, r.kv_dtype) for r in DEFAULTS}
    assert {("sm90", "bf16"), ("sm90", "fp8"), ("cuda", "*"), ("cpu", "*")} <= rows
    for row in DEFAULTS:
        assert all(name in ADAPTERS for name in row.order) and row.evidence


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_declared_support_is_served_here(name, monkeypatch):
    """Where an adapter can run at all, it accepts every KV dtype it declares, at pages of 64
    and 1 where declared, so the conformance suite's skips are only what the machine lacks."""
    if not CUDA:
        monkeypatch.setenv("DS_PLUGIN_TRITON_ON_CPU", "1")
    cls = adapter_class(name)
    probe = spec()
    if not _library_here(cls):
        assert cls.refusal(probe), f"{name} serves here without its library or device"
        return
    if probe.device.type == "cuda" and cls.caps.compute:
        if not cls.caps.compute(torch.cuda.get_device_capability()):
            assert "compute capability" in cls.refusal(probe)
            return
    for kv in cls.caps.kv_dtypes - {"fp32", "fp16"}:
        if kv == "fp8" and CUDA and cls.caps.fp8_compute and not cls.caps.fp8_compute(
                torch.cuda.get_device_capability()):
            continue
        for page in (64, 1):
            if cls.caps.page_ok(page):
                s = spec(kv_dtype=kv, page_size=page)
                assert cls.refusal(s) is None, (name, kv, page, cls.refusal(s))


def test_refusals_name_the_adapter_and_the_reason(monkeypatch):
    why = r"'flashmla'.*(KV cache dtype fp8|runs on|compute capability)"
    with pytest.raises(MLAKernelUnavailable, match=why):
        adapter_class("flashmla")(spec(kv_dtype="fp8"))
    reason = adapter_class("flashinfer-cutlass").refusal(spec(max_query_len=3))
    assert reason
    if not CUDA:
        with pytest.raises(MLAKernelUnavailable, match=r"'flashinfer-fa3': runs on cuda, not cpu"):
            adapter_class("flashinfer-fa3")(spec())
        with pytest.raises(MLAKernelUnavailable, match=r"'triton'.*interpreter"):
            adapter_class("triton")(spec())
        # The torch adapter serves FP8 caches (no library limit) and any page size.
        assert adapter_class("torch").refusal(spec(kv_dtype="fp8", page_size=16)) is None
    fp8_refusal = adapter_class("flashinfer-trtllm-gen").refusal(spec(kv_dtype="fp8"))
    assert fp8_refusal and ("fp8" in fp8_refusal or "runs on" in fp8_refusal
                            or "compute" in fp8_refusal)


def test_explicit_choice_is_obeyed_or_refused_never_replaced(monkeypatch):
    monkeypatch.setenv("DS_PLUGIN_MLA_KERNEL", "no-such-kernel")
    with pytest.raises(MLAKernelUnavailable, match="DS_PLUGIN_MLA_KERNEL takes one of triton"):
        choose(spec())
    monkeypatch.setenv("DS_PLUGIN_MLA_KERNEL", "flashmla")
    if adapter_class("flashmla").refusal(spec(kv_dtype="fp8")):
        with pytest.raises(MLAKernelUnavailable, match=r"'flashmla' \(DS_PLUGIN_MLA_KERNEL\)"):
            choose(spec(kv_dtype="fp8"))
    monkeypatch.setenv("DS_PLUGIN_MLA_KERNEL", "Torch" if not CUDA else "Triton")
    choice = choose(spec())
    assert choice.name == ("torch" if not CUDA else "triton")
    assert "DS_PLUGIN_MLA_KERNEL" in choice.reason


@pytest.mark.skipif(CUDA, reason="the CPU defaults")
def test_cpu_default_is_torch_and_the_interpreter_switch_picks_triton(monkeypatch):
    choice = choose(spec(page_size=16))
    assert choice.name == "torch" and "default on cpu" in choice.reason
    monkeypatch.setenv("DS_PLUGIN_TRITON_ON_CPU", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert choose(spec(page_size=16)).name == "triton"


def test_hopper_default_prefers_fa3_then_falls_back_to_triton_saying_why(monkeypatch):
    # The default table's logic on a pretend SM90, with FlashInfer absent: Triton, and the
    # reason names what was passed over.
    monkeypatch.setattr(mla_family, "platform_of", lambda device: "sm90")
    fa3 = adapter_class("flashinfer-fa3")
    triton_cls = adapter_class("triton")
    monkeypatch.setattr(fa3, "refusal", classmethod(lambda cls, s: "its library 'flashinfer.mla' "
                                                    "does not import"))
    monkeypatch.setattr(triton_cls, "refusal", classmethod(lambda cls, s: None))
    choice = choose(spec())
    assert choice.name == "triton"
    assert "passed over flashinfer-fa3: its library" in choice.reason
    monkeypatch.setattr(fa3, "refusal", classmethod(lambda cls, s: None))
    assert choose(spec()).name == "flashinfer-fa3"
    assert choose(spec(kv_dtype="fp8")).name == "flashinfer-fa3"


def _ragged_batch(page):
    seq_lens = [0, 1, page, page + 1, 3 * page - 1]
    width = max(math.ceil(n / page) for n in seq_lens) + 2
    gen = torch.Generator().manual_seed(3)
    table = torch.randint(0, 50, (len(seq_lens), width), generator=gen, dtype=torch.int32)
    for b, n in enumerate(seq_lens):
        table[b, math.ceil(n / page):] = 10**6  # entries past a request's pages: never read
    return table, torch.tensor(seq_lens, dtype=torch.int32)


@pytest.mark.parametrize("page", [64, 16, 1])
@pytest.mark.parametrize("s_q", [1, 3])
def test_flashinfer_csr_metadata_lists_exactly_the_used_pages(page, s_q):
    from ds_plugin.attention.mla_flashinfer import csr_metadata

    table, seq = _ragged_batch(page)
    qo, kv_indptr, kv_indices, kv_len = csr_metadata(table, seq, s_q, page)
    want = [table[b, :math.ceil(n / page)].tolist() for b, n in enumerate(seq.tolist())]
    assert qo.tolist() == [s_q * b for b in range(len(want) + 1)]
    assert kv_len.tolist() == seq.tolist()
    got = [kv_indices[kv_indptr[b]:kv_indptr[b + 1]].tolist() for b in range(len(want))]
    assert got == want
    assert all(t.dtype == torch.int32 for t in (qo, kv_indptr, kv_indices, kv_len))


@pytest.mark.parametrize("page", [64, 1])
def test_flashinfer_reads_our_csr_as_the_block_table_it_came_from(page):
    """FlashInfer's own plan-metadata resolver (the one `plan` runs) checks that our CSR and the
    dense block table describe the same requests and pages. CPU-capable: no kernel runs."""
    mla = pytest.importorskip("flashinfer.mla")
    planning = importlib.import_module("flashinfer.mla._batch_mla._planning")
    from ds_plugin.attention.mla_flashinfer import csr_metadata

    table, seq = _ragged_batch(page)
    qo, kv_indptr, kv_indices, kv_len = csr_metadata(table, seq, 2, page)
    clean = table.clone()
    clean[clean == 10**6] = 0  # a dense table's unused entries are padding, any valid id
    dual = mla.MLAPlanMetadata.dual(qo, kv_indptr, kv_indices, kv_len, cum_seq_lens_q=qo,
                                    block_tables=clean, seq_lens=seq, max_q_len=2)
    resolver = planning._MLAPlanMetadataResolver(metadata=dual, page_size=page,
                                                 device=torch.device("cpu"))
    csr = resolver.resolve_csr()  # raises if FlashInfer reads the two forms differently
    assert torch.equal(csr.kv_indices.cpu(), kv_indices)
