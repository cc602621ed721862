"""Startup checks for speculative decoding, run by vLLM while it builds its config.

vLLM's V1 model runner (the CPU build's, and CUDA's when V2 is off or unsupported) refuses
custom logits processors under speculative decoding, but only inside the worker, after the
engine processes have started, as a traceback from another process. vLLM calls
`verify_and_update_config` for the target architecture while it validates the config in the
process that parses the flags (vllm/config/vllm.py, try_verify_and_update_config), so the
refusal comes out there, once, as one line naming both flags.
"""

from __future__ import annotations

import logging

from ds_plugin._vllm.spec import VerifyAndUpdateConfig

log = logging.getLogger("vllm.ds_plugin")


def refusal(logits_processors, method: str | None) -> str:
    names = ", ".join(p if isinstance(p, str) else f"{p.__module__}:{p.__qualname__}"
                      for p in logits_processors)
    return (f"ds-plugin: --logits-processors ({names}) cannot run with --speculative-config "
            f"(method {method!r}): vLLM's V1 model runner, which this engine uses, rejects "
            "custom logits processors under speculative decoding; drop one of the two flags")


class SpeculativeStartupCheck(VerifyAndUpdateConfig):
    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        spec = vllm_config.speculative_config
        procs = vllm_config.model_config.logits_processors if vllm_config.model_config else None
        if spec is None or not procs or vllm_config.use_v2_model_runner:
            return
        line = refusal(procs, spec.method)
        log.error("%s", line)
        raise ValueError(line)
