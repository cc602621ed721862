"""The CLI's only vLLM imports: vLLM's serve argument parser, and the registry probe that
`ds-plugin doctor` runs in a fresh process. Importing this module imports no vLLM; each
function imports what it uses, so `ds-plugin recipe` and `doctor` run where vLLM is absent.

    python -m ds_plugin._vllm.cli probe    # one JSON object on the last stdout line
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shlex
import sys

__all__ = ["ServeArgsError", "check_serve_line", "serve_parser", "probe",
           "registered_quantization_methods"]


class ServeArgsError(ValueError):
    pass


def serve_parser():
    """vLLM's own `vllm serve` parser (make_arg_parser), raising instead of exiting. Building
    it loads the general plugins, as `vllm serve` does, so ds-plugin's parsers are known."""
    # vllm.entrypoints.cli.serve imports both names in 0.32 and 0.33 (their defining
    # module moved from launchers/ to common/ in 0.33); the checker verifies each series.
    from vllm.entrypoints.cli.serve import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))

    def error(message: str):
        raise ServeArgsError(message)

    parser.error = error
    return parser


def check_serve_line(line: str, parser=None):
    """Parse one rendered shell line ('A=1 vllm serve MODEL --flags') the way `vllm serve`
    does: vLLM's parser, its post-parse validation, and the parser names against vLLM's
    registries. Returns the namespace; ServeArgsError names what vLLM refuses."""
    from vllm.entrypoints.cli.serve import validate_parsed_serve_args
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    words = shlex.split(line)
    while words and "=" in words[0] and not words[0].startswith("-"):
        words.pop(0)
    if words[:2] != ["vllm", "serve"]:
        raise ServeArgsError(f"not a `vllm serve` line: {line!r}")
    ns = (parser or serve_parser()).parse_args(words[2:])
    try:
        validate_parsed_serve_args(ns)
    except (TypeError, ValueError) as e:
        raise ServeArgsError(str(e)) from None
    if ns.tool_call_parser and ns.tool_call_parser not in ToolParserManager.list_registered():
        raise ServeArgsError(f"--tool-call-parser {ns.tool_call_parser}: not registered")
    reasoning = ns.structured_outputs_config.reasoning_parser
    if reasoning and reasoning not in ReasoningParserManager.list_registered():
        raise ServeArgsError(f"--reasoning-parser {reasoning}: not registered")
    return ns


def registered_quantization_methods() -> list[str]:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    return list(QUANTIZATION_METHODS)


# -- doctor's probe (run in a fresh interpreter) -----------------------------------------


def _resolve(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def _owner(obj) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _library(module: str) -> dict:
    if importlib.util.find_spec(module) is None:
        return {"installed": False}
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure is the finding
        return {"installed": True, "imports": False, "error": f"{type(e).__name__}: {e}"}
    return {"installed": True, "imports": True, "version": str(getattr(mod, "__version__", "?"))}


def probe() -> dict:
    """What a fresh vLLM process sees once its plugins are loaded, as plain data."""
    out: dict = {}
    try:
        import vllm
    except Exception as e:  # noqa: BLE001
        return {"import_error": f"{type(e).__name__}: {e}"}
    out["vllm_version"] = vllm.__version__
    # The class `current_platform` would be (that module attribute is lazy, served by a
    # module __getattr__); its device_type is a class attribute.
    from vllm.platforms import resolve_current_platform_cls_qualname

    module, _, cls = resolve_current_platform_cls_qualname().rpartition(".")
    out["platform"] = getattr(_resolve(module, cls), "device_type", "") or "unspecified"
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    from vllm.model_executor.models.registry import ModelRegistry, _LazyRegisteredModel

    import ds_plugin

    models = {}
    for arch in ds_plugin.MODELS:
        entry = ModelRegistry.models.get(arch)
        models[arch] = (f"{entry.module_name}:{entry.class_name}"
                        if isinstance(entry, _LazyRegisteredModel) else repr(entry))
    out["models"] = models
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    out["tool_parsers"] = {n: _owner(ToolParserManager.get_tool_parser(n))
                           for n in ds_plugin.TOOL_PARSERS
                           if n in ToolParserManager.list_registered()}
    out["reasoning_parsers"] = {n: _owner(ReasoningParserManager.get_reasoning_parser(n))
                                for n in ds_plugin.REASONING_PARSERS
                                if n in ReasoningParserManager.list_registered()}
    from vllm.model_executor.layers.quantization import (
        QUANTIZATION_METHODS,
        get_quantization_config,
    )

    out["quant_methods"] = {n: _owner(get_quantization_config(n))
                            for n in ds_plugin.QUANT_CONFIGS if n in QUANTIZATION_METHODS}
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    backends = {}
    for name in ds_plugin.ATTENTION_BACKENDS:
        try:
            backends[name] = AttentionBackendEnum[name].get_path()
        except (KeyError, ValueError) as e:
            backends[name] = f"unset ({e})"
    out["attention_backends"] = backends
    # FlashMLA: the standalone package, or the copy vLLM's CUDA wheel builds in.
    out["libraries"] = {m: _library(m) for m in ("flashinfer", "deep_gemm", "flash_mla",
                                                  "vllm._flashmla_C")}
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["probe"]:
        sys.exit("usage: python -m ds_plugin._vllm.cli probe")
    print(json.dumps(probe()))
