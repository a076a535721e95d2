"""Analytic FLOPs of one OFT pass from a kept-token trace, for any model shape (the real 7B included).

A multiply-add counts as 2 FLOPs. Per decoder layer with n tokens (no KV cache, full bidirectional
attention): projections ``2 n (2 D^2 + 2 D D_kv)``, scores and mixing ``4 n^2 D``, gated MLP ``6 n D I``.
Norms, RoPE, softmax and residuals are lower order and left out.
"""
from __future__ import annotations

from dataclasses import dataclass

from .tiny import checkpoint_config


@dataclass(frozen=True)
class LlmShape:
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int

    @classmethod
    def from_text_config(cls, text: dict) -> "LlmShape":
        heads = int(text.get("num_attention_heads", 32))
        return cls(
            hidden=int(text.get("hidden_size", 4096)),
            intermediate=int(text.get("intermediate_size", 11008)),
            n_layers=int(text.get("num_hidden_layers", 32)),
            n_heads=heads,
            n_kv_heads=int(text.get("num_key_value_heads") or heads),
        )

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.n_heads * self.n_kv_heads


#: the Llama-2 7B backbone of the released OpenVLA-OFT checkpoints
FULL_7B = LlmShape.from_text_config(checkpoint_config("full")["text_config"])


def layer_flops(n: int, shape: LlmShape) -> int:
    D, I, Dkv = shape.hidden, shape.intermediate, shape.kv_dim
    projections = 2 * n * (2 * D * D + 2 * D * Dkv)
    attention = 4 * n * n * D
    mlp = 6 * n * D * I
    return projections + attention + mlp


def scoring_flops(rows: int, n: int, shape: LlmShape) -> int:
    """Extra FLOPs of explicit probabilities for ``rows`` query rows against ``n`` keys."""
    return 2 * rows * n * shape.hidden


def resample_trace(tokens_per_layer: list[int], depth: int, fixed: int = 0) -> list[int]:
    """Map a per-layer token trace of one depth onto ``depth`` layers: the first ``fixed`` layers one to one (the
    V_local layers, which are the same absolute layers at every depth), the rest by relative position."""
    src = len(tokens_per_layer)
    if src == depth:
        return list(tokens_per_layer)
    fixed = max(0, min(fixed, src - 1, depth - 1))
    head, tail = list(tokens_per_layer[:fixed]), tokens_per_layer[fixed:]
    n, m = len(tail), depth - fixed
    return head + [tail[min(n - 1, (j * n) // m)] for j in range(m)]


def llm_flops(tokens_per_layer: list[int], shape: LlmShape, fixed: int = 0) -> int:
    """FLOPs of the decoder stack for a trace (resampled to ``shape.n_layers`` if needed, see
    :func:`resample_trace`)."""
    return sum(layer_flops(n, shape) for n in resample_trace(tokens_per_layer, shape.n_layers, fixed))


def llm_flops_ratio(pruned_trace: list[int], full_trace: list[int], shape: LlmShape = FULL_7B, fixed: int = 0) -> float:
    """Pruned / unpruned decoder FLOPs at ``shape`` (default: the real 7B backbone). ``fixed``: leading layers that
    are the same absolute layers at every depth (the pruning's V_local layers: ``local_layers[1] + 1``)."""
    return llm_flops(pruned_trace, shape, fixed) / llm_flops(full_trace, shape, fixed)
