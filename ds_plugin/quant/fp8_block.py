"""`ds_fp8`: DeepSeek's block-FP8 checkpoints (`quant_method: fp8`, 128x128 weight blocks,
fp32 `weight_scale_inv`, activations quantized per token per 128 channels at run time).

Lifecycle per layer: create_weights (checkpoint layout, scales poisoned with NaN so a
tensor the checkpoint lacks is caught) -> process_weights_after_loading (validate every
scale grid, naming the tensor; pick the run-time path) -> apply.

Paths, chosen once per layer at load, never per call on platform:
- CUDA: fp8 weights stay fp8; each call quantizes the activations (fp8_act_quant) and
  runs whichever GEMM `gemm_path` picks for (M, N, K): our Triton fp8_block_gemm_nt or
  torch's blockwise scaled_mm (benchmarks/README.md has the measurements behind it).
- CPU (no fp8 matrix units): the weight is dequantized to the model dtype once at load
  and applied with F.linear; the scales and the checkpoint layout are validated the same.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ds_plugin import _vllm

V = _vllm.quant_api()
log = logging.getLogger("vllm.ds_plugin")

NAME = "ds_fp8"
# HF model_type values whose block-FP8 checkpoints ds_fp8 claims without being named.
CLAIMED_MODEL_TYPES = ("deepseek_v3", "deepseek_mtp")
BLOCK = 128
# (N, K) -> the smallest M from which torch's cuBLAS blockwise GEMM beat our Triton kernel
# on the H200 (benchmarks/README.md, 2026-11-29). Below it the weight read dominates and
# our split-K kernel wins. Shapes not measured use TORCH_MIN_M.
TORCH_FROM_M = {(2112, 7168): 128, (24576, 1536): 128, (32768, 512): 64, (7168, 16384): 64,
                (4096, 7168): 128, (7168, 2048): 16}
TORCH_MIN_M = 128
# Checkpoint dtypes the loaders take. DeepSeek ships fp32 scales; a bf16 scale converts to
# the fp32 parameter exactly, so it is accepted (and logged once per model). Anything else
# (an integer or fp8 scale, a bf16 weight in an fp8 layer) would be converted silently by
# the loader's copy_ and give wrong output, so it stops the load naming the tensor.
WEIGHT_DTYPES = (torch.float8_e4m3fn,)
SCALE_DTYPES = (torch.float32, torch.bfloat16)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


class DSBlockFp8Config(V.QuantizationConfig):
    """Claims checkpoints whose quantization_config says fp8 with [128, 128] blocks."""

    def __init__(self, activation_scheme: str = "dynamic", ignored_layers: list[str] | None = None,
                 weight_block_size: list[int] | None = None) -> None:
        super().__init__()
        block = list(weight_block_size or [BLOCK, BLOCK])
        if block != [BLOCK, BLOCK]:
            raise ValueError(f"ds_fp8: weight_block_size must be [128, 128], got {block}")
        if activation_scheme != "dynamic":
            raise ValueError(f"ds_fp8: activation_scheme must be 'dynamic' (per-token groups "
                             f"quantized at run time), got {activation_scheme!r}")
        self.weight_block_size = block
        self.activation_scheme = activation_scheme
        self.ignored_layers = list(ignored_layers or [])
        self.paths_logged: set[str] = set()

    def note_path(self, layer_kind: str, path: str) -> None:
        """Log once per model which path a kind of layer runs (the engine log shows it)."""
        self.note_once(f"{layer_kind} layers run the {path} path")

    def note_once(self, message: str) -> None:
        if message not in self.paths_logged:
            self.paths_logged.add(message)
            log.info("ds_fp8: %s", message)

    def get_name(self) -> str:
        return NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 89  # fp8 tensor cores (Ada, Hopper and later)

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DSBlockFp8Config:
        return cls(activation_scheme=config.get("activation_scheme", "dynamic"),
                   ignored_layers=config.get("ignored_layers") or config.get("modules_to_not_convert"),
                   weight_block_size=config.get("weight_block_size"))

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None,
                                     hf_config: Any = None) -> str | None:
        # Claim DeepSeek's block-FP8 format unless the user named another method; answer
        # to our own name too, so an MTP draft that inherits "ds_fp8" passes vLLM's check.
        if user_quant == NAME:
            return NAME
        is_block_fp8 = (hf_quant_cfg.get("quant_method") == "fp8"
                        and list(hf_quant_cfg.get("weight_block_size") or []) == [BLOCK, BLOCK])
        # Only the DeepSeek-V3 family (and its MTP draft) is claimed automatically: other
        # architectures with the same format keep vLLM's Fp8 method unless the user asks
        # for ds_fp8 by name.
        model_type = getattr(hf_config, "model_type", None)
        ours = model_type is None or model_type in CLAIMED_MODEL_TYPES
        return NAME if is_block_fp8 and ours and user_quant is None else None

    def is_ignored(self, prefix: str) -> bool:
        return any(prefix == p or prefix.startswith(p + ".") for p in self.ignored_layers)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        if isinstance(layer, V.LinearBase):
            if self.is_ignored(prefix):
                return V.UnquantizedLinearMethod()
            return DSBlockFp8LinearMethod(self, prefix)
        if isinstance(layer, V.RoutedExperts):
            from ds_plugin.quant.fp8_moe import DSBlockFp8MoEMethod

            return DSBlockFp8MoEMethod(self, layer, prefix)
        return None


def checked_loader(loader, name: str, expected: dict, config: DSBlockFp8Config):
    """Wrap a weight loader so a checkpoint tensor of the wrong shape or dtype fails
    naming itself.

    `expected` maps the loader's shard id (None for a whole tensor) to the shape of the
    tensor as stored in the checkpoint. vLLM's loaders narrow what they are given, so an
    oversized tensor would otherwise load silently; they also copy_ into the parameter,
    which converts any dtype (WEIGHT_DTYPES / SCALE_DTYPES say what is taken).
    """
    is_scale = name.endswith("_scale_inv")
    dtypes = SCALE_DTYPES if is_scale else WEIGHT_DTYPES

    def load(param, loaded_weight, *args, **kwargs):
        if loaded_weight.dtype not in dtypes:
            want = "float32 (bfloat16 is upcast exactly)" if is_scale else "float8_e4m3fn"
            raise ValueError(f"{name}: checkpoint tensor has dtype "
                             f"{str(loaded_weight.dtype).removeprefix('torch.')}, expected {want}")
        if is_scale and loaded_weight.dtype != torch.float32:
            config.note_once("bfloat16 weight_scale_inv tensors are upcast to float32 (exact)")
        # Linear loaders take (param, w, loaded_shard_id); expert loaders get shard_id=.
        shard = kwargs.get("shard_id", kwargs.get("loaded_shard_id", args[0] if args else None))
        want = expected.get(shard)
        if want is not None and tuple(loaded_weight.shape) != want:
            where = f" (shard {shard!r})" if shard is not None else ""
            raise ValueError(f"{name}: checkpoint tensor has shape {tuple(loaded_weight.shape)}"
                             f"{where}, expected {want}")
        try:
            return loader(param, loaded_weight, *args, **kwargs)
        except (AssertionError, RuntimeError) as e:
            raise ValueError(f"{name}: checkpoint tensor of shape {tuple(loaded_weight.shape)} "
                             f"does not fit parameter {tuple(param.shape)}: {e}") from e
    return load


def block_grid(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Scale grid of a weight shape: the last two dims in 128-blocks."""
    return (*shape[:-2], _ceil(shape[-2], BLOCK), _ceil(shape[-1], BLOCK))


def validate_scales(name: str, scale: torch.Tensor, want: tuple[int, ...]) -> None:
    """Scale grid must have the block shape, and be loaded (no NaN poison), finite, > 0."""
    if tuple(scale.shape) != want:
        raise ValueError(f"{name}: shape {tuple(scale.shape)}, expected {want} "
                         f"(one fp32 scale per 128x128 weight block)")
    if scale.isnan().any():
        raise ValueError(f"{name}: missing from the checkpoint (or partly: "
                         f"{int(scale.isnan().sum())} of {scale.numel()} scales never loaded)")
    if not (scale.isfinite().all() and (scale > 0).all()):
        raise ValueError(f"{name}: scales must be finite and positive")


def gemm_path(m: int, n: int, k: int) -> str:
    """'torch' (blockwise scaled_mm) or 'triton' (fp8_block_gemm_nt) for an (M, N, K) GEMM.
    torch's path needs K a whole number of 128-blocks (cuBLAS blockwise)."""
    if k % BLOCK == 0 and m >= TORCH_FROM_M.get((n, k), TORCH_MIN_M):
        return "torch"
    return "triton"


def blockwise_scaled_mm(a, a_s, w, w_s, out_dtype):
    """torch's cuBLAS blockwise GEMM on our layouts: a's scales go M-major, w as (K, N)."""
    import torch.nn.functional as F

    st = F.ScalingType
    # cuBLAS checks the strides literally: exactly (1, M).
    a_s_mmajor = torch.empty_strided(a_s.shape, (1, a_s.shape[0]), dtype=a_s.dtype,
                                     device=a_s.device).copy_(a_s)
    return F.scaled_mm(a, w.t(), a_s_mmajor, st.BlockWise1x128, w_s.t(),
                       st.BlockWise128x128, output_dtype=out_dtype)


def torch_path_agrees(w: torch.Tensor, w_s: torch.Tensor, dtype: torch.dtype) -> bool:
    """Run torch's blockwise GEMM once for this weight and compare it with our kernel.

    False when this torch/cuBLAS build rejects the shape or disagrees (beyond fp8 GEMM
    noise, calc_diff 1e-3); the layer then keeps to our kernel. Once per layer, at load.
    """
    from ds_plugin.kernels import fp8_act_quant, fp8_block_gemm_nt
    from ds_plugin.kernels.ref_fp8 import calc_diff

    if w.shape[1] % BLOCK:
        return False
    g = torch.Generator(device=w.device).manual_seed(0)
    a, a_s = fp8_act_quant(torch.randn(TORCH_MIN_M, w.shape[1], device=w.device,
                                       generator=g).to(dtype))
    try:
        theirs = blockwise_scaled_mm(a, a_s, w, w_s, dtype)
    except (RuntimeError, ValueError, NotImplementedError):  # what torch raises for "no kernel"
        return False
    return calc_diff(theirs, fp8_block_gemm_nt(a, a_s, w, w_s, out_dtype=dtype)) < 1e-3


def fp8_linear(x: torch.Tensor, w: torch.Tensor, w_s: torch.Tensor,
               torch_ok: bool = True) -> torch.Tensor:
    """x (..., K) bf16 @ dequant(w (N, K) fp8, w_s).T on CUDA, per-shape GEMM choice."""
    from ds_plugin.kernels import fp8_act_quant, fp8_block_gemm_nt

    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    a, a_s = fp8_act_quant(x2)
    n = w.shape[0]
    if torch_ok and gemm_path(x2.shape[0], n, k) == "torch":
        y = blockwise_scaled_mm(a, a_s, w, w_s, x.dtype)
    else:
        y = fp8_block_gemm_nt(a, a_s, w, w_s, out_dtype=x.dtype)
    return y.view(*x.shape[:-1], n)


class DSBlockFp8LinearMethod(V.LinearMethodBase):
    """Linear layers with block-FP8 weights (`weight` fp8 (N, K), `weight_scale_inv`)."""

    def __init__(self, config: DSBlockFp8Config, prefix: str) -> None:
        self.config = config
        self.prefix = prefix

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs) -> None:
        n, k = sum(output_partition_sizes), input_size_per_partition
        if any(p % BLOCK for p in output_partition_sizes[:-1]):
            # A merged layer's shards must start on block boundaries, or one scale row
            # would cover two shards' weights (only the last may end in a partial block,
            # as DeepSeek's fused q_a + kv_a, 1536 + 576, does).
            raise ValueError(f"{self.prefix}: merged output sizes {output_partition_sizes}: "
                             f"all but the last must be multiples of {BLOCK}")
        loader = extra_weight_attrs.get("weight_loader")
        # Checkpoint shapes per shard id (unsharded: vLLM slices this rank's part itself).
        tp_out = output_size // n
        stored = {None: (output_size, input_size)}
        if len(output_partition_sizes) > 1:
            stored.update({i: (p * tp_out, input_size) for i, p in enumerate(output_partition_sizes)})
        layer.orig_dtype = params_dtype
        layer.logical_widths = output_partition_sizes
        layer.weight_block_size = self.config.weight_block_size  # vLLM's loaders shard scales by it
        weight = V.ModelWeightParameter(
            data=torch.empty(n, k, dtype=torch.float8_e4m3fn), input_dim=1, output_dim=0,
            weight_loader=checked_loader(loader, f"{self.prefix}.weight", stored, self.config))
        layer.register_parameter("weight", weight)
        scale = V.BlockQuantScaleParameter(
            data=torch.full((_ceil(n, BLOCK), _ceil(k, BLOCK)), float("nan"), dtype=torch.float32),
            input_dim=1, output_dim=0,
            weight_loader=checked_loader(loader, f"{self.prefix}.weight_scale_inv",
                                         {k: block_grid(v) for k, v in stored.items()},
                                         self.config))
        scale.format_ue8m0 = False
        layer.register_parameter("weight_scale_inv", scale)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        w = layer.weight
        n, k = w.shape
        validate_scales(f"{self.prefix}.weight_scale_inv", layer.weight_scale_inv.data,
                        (_ceil(n, BLOCK), _ceil(k, BLOCK)))
        if w.device.type == "cuda":
            layer.ds_fp8_path = "cuda-fp8"
            layer.ds_fp8_torch_ok = torch_path_agrees(w.data, layer.weight_scale_inv.data,
                                                      layer.orig_dtype)
            self.config.note_path("linear", "CUDA fp8 (Triton block GEMM / torch blockwise scaled_mm)")
            return
        from ds_plugin.kernels import fp8_block_dequant

        # CPU: no fp8 GEMM to run, so the dequantized weight is what F.linear reads.
        deq = fp8_block_dequant(w.data, layer.weight_scale_inv.data, layer.orig_dtype)
        V.replace_parameter(layer, "weight", deq)
        layer.ds_fp8_path = "cpu-dequantized"
        self.config.note_path("linear", "CPU (weights dequantized to the model dtype at load)")

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        if layer.ds_fp8_path == "cpu-dequantized":
            # x may be fp32: vLLM's MLA reads kv_b_proj's weights back by applying the
            # layer to an fp32 identity matrix.
            w = layer.weight if layer.weight.dtype == x.dtype else layer.weight.to(x.dtype)
            return torch.nn.functional.linear(x, w, bias)
        y = fp8_linear(x, layer.weight, layer.weight_scale_inv, layer.ds_fp8_torch_ok)
        return y + bias if bias is not None else y
