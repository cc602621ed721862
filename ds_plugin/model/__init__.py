"""DeepSeek-V3/R1/V3.1 on vLLM's parallel layers.

`deepseek_v3` (the model vLLM builds), `mla` (attention glue), `moe` (dense MLP and
DeepSeekMoE), `config` (the typed view of config.json), `weights` (release names -> model).
Only `config` is importable without vLLM; vLLM imports the rest lazily through the registry.
"""

__all__ = ["DeepseekV3ForCausalLM"]


def __getattr__(name: str):
    # Lazy, so `import ds_plugin.model` stays free of vLLM.
    if name == "DeepseekV3ForCausalLM":
        from ds_plugin.model.deepseek_v3 import DeepseekV3ForCausalLM

        return DeepseekV3ForCausalLM
    raise AttributeError(name)
