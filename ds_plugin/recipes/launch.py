"""One launch, rendered as `vllm serve` lines: the shape both the recipes and the SGLang
translator (`ds_plugin.recipes.sglang`) produce, so a flag is spelled for vLLM in one place.

Parallelism is stated the way vLLM counts it: `tp` GPUs per attention replica, `dp`
attention replicas (vLLM's data parallelism; the MoE layers then span tp x dp GPUs), `ep`
to shard the experts across those GPUs instead of slicing every expert. Multi-node lines
use vLLM's own multi-node flags (`--nnodes/--node-rank/--master-addr` for one TP group
across nodes, `--data-parallel-*` and `--headless` when the replicas span nodes).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field, replace

__all__ = ["Launch", "LaunchError", "NODE0", "mtp_config"]

# Placeholders a user replaces by the first node's address; they parse as vLLM values.
NODE0 = "NODE0_IP"
MASTER_PORT = 29500
DP_RPC_PORT = 13345


class LaunchError(ValueError):
    """A launch that vLLM cannot express; the message names the setting or flag."""


def mtp_config(num_speculative_tokens: int) -> str:
    """vLLM's speculative config for DeepSeek's MTP layer (one layer reused for k > 1)."""
    if num_speculative_tokens < 1:
        raise LaunchError(f"MTP needs num_speculative_tokens >= 1, got {num_speculative_tokens}")
    return json.dumps({"method": "mtp", "num_speculative_tokens": num_speculative_tokens})


@dataclass(frozen=True)
class Launch:
    model: str
    tp: int = 1
    dp: int = 1
    ep: bool = False
    nodes: int = 1
    gpu_memory_utilization: float | None = None
    tool_parser: str | None = None
    reasoning_parser: str | None = None
    chat_template: str | None = None  # a path, as vLLM takes it
    mtp_tokens: int | None = None
    quantization: str | None = None
    max_model_len: int | None = None
    served_model_name: str | None = None
    dist_timeout: int | None = None
    trust_remote_code: bool = False
    host: str | None = None
    port: int | None = None
    node_rank: int = field(default=0, compare=False)  # the node `argv()` renders by default
    master_addr: str = NODE0
    master_port: int = MASTER_PORT
    extra: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        for name in ("tp", "dp", "nodes"):
            if getattr(self, name) < 1:
                raise LaunchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nodes > 1 and (self.tp * self.dp) % self.nodes:
            raise LaunchError(f"tp x dp = {self.tp * self.dp} GPUs do not split evenly over "
                              f"{self.nodes} nodes")
        if self.nodes > 1 and self.dp > 1 and self.dp % self.nodes:
            raise LaunchError(f"dp {self.dp} replicas do not split evenly over {self.nodes} nodes")

    @property
    def gpus(self) -> int:
        return self.tp * self.dp

    def with_(self, **changes) -> Launch:
        return replace(self, **changes)

    # -- rendering -----------------------------------------------------------------------

    def argv(self, node_rank: int | None = None) -> list[str]:
        """`vllm serve` arguments (without the `vllm serve` words) for one node."""
        node_rank = self.node_rank if node_rank is None else node_rank
        if not 0 <= node_rank < self.nodes:
            raise LaunchError(f"node_rank {node_rank} outside 0..{self.nodes - 1}")
        a = [self.model]
        if self.tp > 1:
            a += ["--tensor-parallel-size", str(self.tp)]
        if self.dp > 1:
            a += ["--data-parallel-size", str(self.dp)]
        if self.ep:
            a.append("--enable-expert-parallel")
        a += self._node_args(node_rank)
        if self.quantization:
            a += ["--quantization", self.quantization]
        if self.gpu_memory_utilization is not None:
            a += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        if self.max_model_len is not None:
            a += ["--max-model-len", str(self.max_model_len)]
        if self.served_model_name:
            a += ["--served-model-name", self.served_model_name]
        if self.tool_parser:
            a += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_parser]
        if self.reasoning_parser:
            a += ["--reasoning-parser", self.reasoning_parser]
        if self.chat_template:
            a += ["--chat-template", self.chat_template]
        if self.mtp_tokens:
            a += ["--speculative-config", mtp_config(self.mtp_tokens)]
        if self.dist_timeout is not None:
            a += ["--distributed-timeout-seconds", str(self.dist_timeout)]
        if self.trust_remote_code:
            a.append("--trust-remote-code")
        if self.host:
            a += ["--host", self.host]
        if self.port is not None:
            a += ["--port", str(self.port)]
        return a + list(self.extra)

    def _node_args(self, rank: int) -> list[str]:
        if self.nodes == 1:
            return []
        if self.dp > 1:
            # Replicas across nodes: node 0 runs the API server and its local ranks, the
            # others only engines (vLLM's data-parallel deployment).
            local = self.dp // self.nodes
            a = ["--data-parallel-size-local", str(local), "--data-parallel-address",
                 self.master_addr, "--data-parallel-rpc-port", str(DP_RPC_PORT)]
            if rank:
                a += ["--data-parallel-start-rank", str(rank * local), "--headless"]
            return a
        a = ["--nnodes", str(self.nodes), "--node-rank", str(rank), "--master-addr",
             self.master_addr, "--master-port", str(self.master_port)]
        return a + (["--headless"] if rank else [])

    def lines(self) -> list[str]:
        """One shell line per node: env assignments, then `vllm serve ...`."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        out = []
        for rank in range(self.nodes):
            cmd = shlex.join(["vllm", "serve", *self.argv(rank)])
            out.append(f"{env} {cmd}" if env else cmd)
        return out
