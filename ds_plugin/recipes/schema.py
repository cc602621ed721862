"""The recipe format: one YAML file per hardware x weights row, validated by pydantic.

Every model refuses unknown keys, so a typo (`paralel:`) is an error naming the key rather
than a setting silently dropped. Validation needs neither vLLM nor a GPU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Recipe", "WEIGHT_FORMATS", "format_errors"]

WEIGHT_FORMATS = ("fp8", "bf16", "int8", "w4afp8", "awq", "mxfp4", "nvfp4")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hardware(_Strict):
    kind: Literal["gpu", "cpu", "npu"] = "gpu"
    accelerator: str = Field(description="e.g. H200, B200, MI300X, Xeon 6 (AMX)")
    per_node: int = Field(ge=1, description="accelerators (or CPU sockets) per node")
    nodes: int = Field(1, ge=1)
    memory_gb: float | None = Field(None, description="per accelerator, or host RAM for CPUs")


class Weights(_Strict):
    format: Literal[WEIGHT_FORMATS]
    checkpoint: str = Field(description="the public checkpoint (Hugging Face id)")
    also: tuple[str, ...] = Field((), description="other checkpoints of the same format")
    quantization: str | None = Field(None, description="vLLM --quantization, when needed")


class Parallel(_Strict):
    tp: int = Field(1, ge=1, description="GPUs per attention replica (vLLM tensor parallel)")
    dp: int = Field(1, ge=1, description="attention replicas (vLLM data parallel)")
    ep: bool = Field(False, description="shard the experts over tp x dp (vLLM expert parallel)")


class Parsers(_Strict):
    tool: str | None = None
    reasoning: str | None = None
    chat_template: str | None = Field(None, description="a ds-plugin template name or a path")


class Reference(_Strict):
    what: str
    value: float
    unit: str
    engine: str
    setting: str = Field(description="hardware, parallelism, workload as the source states them")
    source: str


class Recipe(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    summary: str
    status: Literal["supported", "unsupported"]
    reason: str | None = None
    requires: tuple[str, ...] = Field(
        (), description="ds-plugin quantization methods that must be registered "
                        "(ds_plugin.QUANT_CONFIGS); the recipe is unsupported until they are")
    hardware: Hardware
    weights: Weights
    vllm: str = Field(description="vLLM version range, e.g. '>=0.32.0,<0.33'")
    parallel: Parallel = Parallel()
    mtp: int = Field(0, ge=0, le=4, description="MTP num_speculative_tokens; 0 = off")
    parsers: Parsers = Parsers()
    max_model_len: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    flags: tuple[str, ...] = Field((), description="further vLLM serve flags, verbatim")
    env: dict[str, str] = Field(default_factory=dict)
    sglang: str | None = Field(None, description="SGLang's published launch line for this row")
    reference: tuple[Reference, ...] = ()
    notes: str | None = None

    @field_validator("vllm")
    @classmethod
    def _version_range(cls, v: str) -> str:
        from ds_plugin.recipes.versions import parse_range

        parse_range(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.status == "unsupported" and not self.reason:
            raise ValueError("reason: required when status is unsupported")
        if self.status == "supported" and self.reason:
            raise ValueError("reason: only for status unsupported (use notes)")
        hw, par = self.hardware, self.parallel
        if hw.kind == "gpu" and par.tp * par.dp != hw.per_node * hw.nodes:
            raise ValueError(f"parallel: tp {par.tp} x dp {par.dp} must use the "
                             f"{hw.per_node * hw.nodes} GPUs of hardware")
        if par.dp > 1 and hw.nodes > 1 and par.dp % hw.nodes:
            raise ValueError(f"parallel.dp: {par.dp} replicas do not split over {hw.nodes} nodes")
        return self


def format_errors(err, where: str) -> list[str]:
    """pydantic's ValidationError as 'WHERE: dotted.key: message' lines."""
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        out.append(f"{where}: {key}: {msg}")
    return out
