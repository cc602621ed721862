"""Registration and declared capabilities of ds-plugin's MLA backend (no engine started)."""

from __future__ import annotations

import pytest

import ds_plugin
from ds_plugin import _vllm
from tests.helpers.vllm_probe import attention_backend_path


@pytest.fixture
def restore_cpu_mla():
    # register() overrides vLLM's process-wide enum entries; put CPU_MLA back for later tests.
    before = attention_backend_path("CPU_MLA")
    yield
    _vllm.register_attention_backend("CPU_MLA", before)


def test_custom_always_cpu_mla_only_when_opted_in(monkeypatch, restore_cpu_mla):
    monkeypatch.delenv("DS_PLUGIN_CPU_MLA", raising=False)
    vllm_cpu_mla = attention_backend_path("CPU_MLA")
    ds_plugin.register()
    assert attention_backend_path("CUSTOM") == "ds_plugin.attention.mla_backend.DSMLABackend"
    assert attention_backend_path("CPU_MLA") == vllm_cpu_mla
    monkeypatch.setenv("DS_PLUGIN_CPU_MLA", "1")
    ds_plugin.register()
    ds_plugin.register()  # idempotent: vLLM loads plugins in every process, sometimes twice
    assert attention_backend_path("CPU_MLA") == "ds_plugin.attention.mla_backend.DSCpuMLABackend"


def test_backends_declare_what_the_kernels_support():
    from ds_plugin.attention.mla_backend import DSCpuMLABackend, DSMLABackend, DSMLAImpl

    # get_name() must be the enum member each class is registered under.
    assert DSMLABackend.get_name() == "CUSTOM" and DSCpuMLABackend.get_name() == "CPU_MLA"
    assert DSMLABackend.is_mla() and DSMLABackend.get_impl_cls() is DSMLAImpl
    assert DSMLABackend.get_supported_head_sizes() == [576]
    assert {"fp8", "fp8_e4m3", "bfloat16"} <= set(DSMLABackend.supported_kv_cache_dtypes)
    assert DSMLABackend.supports_block_size(16) and DSMLABackend.supports_block_size(64)
    assert not DSMLABackend.supports_block_size(8)
    # vLLM's CPU platform forces 16-token blocks and an unquantized cache for MLA.
    assert DSCpuMLABackend.supported_kv_cache_dtypes == ["auto"]
    assert DSCpuMLABackend.supports_block_size(16) and not DSCpuMLABackend.supports_block_size(64)
    builder = DSMLABackend.get_builder_cls()
    assert builder.query_len_support.name == "UNIFORM"  # MTP verification takes the decode path
    assert builder._cudagraph_support.name == "UNIFORM_BATCH"
