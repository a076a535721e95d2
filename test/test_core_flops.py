"""FLOPs formula: a hand count, and torch's own FLOP counter on a real decoder layer."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from specprune_ros.core.flops import FULL_7B, LlmShape, layer_flops, llm_flops, llm_flops_ratio, resample_trace


def test_hand_count():
    shape = LlmShape(hidden=4, intermediate=8, n_layers=2, n_heads=2, n_kv_heads=1)
    # projections 2*3*(2*16 + 2*4*2) = 288, attention 4*9*4 = 144, MLP 6*3*4*8 = 576
    assert layer_flops(3, shape) == 288 + 144 + 576
    assert llm_flops([3, 2], shape) == layer_flops(3, shape) + layer_flops(2, shape)


def test_matches_torch_flop_counter():
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1)
    cfg._attn_implementation = "eager"
    layer = LlamaDecoderLayer(cfg, 0).eval()
    rope = LlamaRotaryEmbedding(cfg)
    n = 37
    h = torch.randn(1, n, 64)
    cos_sin = rope(h, torch.arange(n)[None])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(h, attention_mask=torch.zeros(1, 1, n, n), position_embeddings=cos_sin)
    assert counter.get_total_flops() == layer_flops(n, LlmShape.from_text_config(cfg.to_dict()))


def test_full_model_numbers():
    assert (FULL_7B.hidden, FULL_7B.intermediate, FULL_7B.n_layers) == (4096, 11008, 32)
    full = [600] * 32
    assert llm_flops_ratio(full, full) == 1.0
    half = [600] * 2 + [300] * 30
    r = llm_flops_ratio(half, full)
    assert 0.5 < r < 0.55  # slightly above half: attention is quadratic, so halving n more than halves it
    assert resample_trace([10, 20], 4) == [10, 10, 20, 20]


def test_a_shallow_trace_keeps_its_local_layers_absolute_at_full_depth():
    """V_local scores layers 0 and 1 at every depth: a 6-layer trace's first two layers stay two of the 7B's 32,
    and only the rest stretches (else the unpruned layer 0 would count as 6 of 32)."""
    trace = [591, 165, 139, 139, 139, 139]
    assert resample_trace(trace, 32, fixed=2) == [591, 165] + [139] * 30
    assert resample_trace([591, 165, 139, 120], 8, fixed=2) == [591, 165, 139, 139, 139, 120, 120, 120]
    full = [591] * 6
    at_full_depth = llm_flops_ratio([591, 165] + [139] * 30, [591] * 32)
    assert llm_flops_ratio(trace, full, fixed=2) == at_full_depth
    assert llm_flops_ratio(trace, full) > at_full_depth + 0.1  # the plain stretch: what fixed=2 corrects
