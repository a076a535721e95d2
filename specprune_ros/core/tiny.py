"""Random-weight checkpoints in the released layout: tiny (tests, demo), mid (CPU benchmarks), full (7B shape).

The real loader reads them, so tests always exercise the real loading path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .checkpoint import write_checkpoint
from .model import ModelSpec, OFTModel
from .prompt import make_tiny_tokenizer_files

DINO_ID = "vit_large_patch14_reg4_dinov2.lvd142m"
SIGLIP_ID = "vit_so400m_patch14_siglip_224"
VOCAB = 32000
UNNORM_KEY = "tiny_sim"

SIZES: dict[str, dict] = {
    "tiny": {
        "timm_overrides": [{"embed_dim": 32, "depth": 3, "num_heads": 2}, {"embed_dim": 48, "depth": 3, "num_heads": 2}],
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2},
    },
    "mid": {
        "timm_overrides": [{"embed_dim": 128, "depth": 6, "num_heads": 4}, {"embed_dim": 144, "depth": 6, "num_heads": 4}],
        "text": {"hidden_size": 1024, "intermediate_size": 2752, "num_hidden_layers": 32, "num_attention_heads": 16, "num_key_value_heads": 16},
    },
    "full": {
        "timm_overrides": None,
        "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
    },
}


def make_checkpoint_config(timm_overrides: list[dict] | None, text: dict, chunk_len: int | None = None) -> dict:
    """config.json contents in the released layout for the given tower overrides and Llama dimensions."""
    cfg = {
        "model_type": "openvla",
        "vision_backbone_id": "dinosiglip-vit-so-224px",
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp",
        "use_fused_vision_backbone": True,
        "timm_model_ids": [DINO_ID, SIGLIP_ID],
        "timm_override_act_layers": [None, None],
        "image_sizes": [224, 224],
        "image_resize_strategy": "resize-naive",
        "llm_max_length": 2048,
        "pad_token_id": VOCAB,
        "pad_to_multiple_of": 64,
        "n_action_bins": 256,
        "norm_stats": {},
        "text_config": {"model_type": "llama", "vocab_size": VOCAB + 64, "pad_token_id": VOCAB, **text},
    }
    if timm_overrides is not None:
        cfg["timm_overrides"] = timm_overrides
    if chunk_len is not None:
        cfg["num_actions_chunk"] = chunk_len
    return cfg


def checkpoint_config(size: str = "tiny") -> dict:
    """config.json contents for a model of ``size`` (full = the released 7B architecture)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    return make_checkpoint_config(SIZES[size]["timm_overrides"], SIZES[size]["text"])


def tiny_statistics(action_dim: int = 7, proprio_dim: int = 8) -> dict:
    """Statistics of a made-up dataset: actions in [-1, 1] (gripper [0, 1]), proprio in [-0.5, 0.5]."""
    a_lo = [-1.0] * (action_dim - 1) + [0.0]
    a_hi = [1.0] * action_dim
    p_lo, p_hi = [-0.5] * proprio_dim, [0.5] * proprio_dim

    def block(lo, hi, mask):
        lo, hi = np.array(lo), np.array(hi)
        return {
            "q01": lo.tolist(), "q99": hi.tolist(), "min": (lo * 1.1).tolist(), "max": (hi * 1.1).tolist(),
            "mean": ((lo + hi) / 2).tolist(), "std": ((hi - lo) / 4).tolist(), "mask": mask,
        }

    return {
        UNNORM_KEY: {
            "action": block(a_lo, a_hi, [True] * (action_dim - 1) + [False]),
            "proprio": block(p_lo, p_hi, [True] * proprio_dim),
            "num_transitions": 1000,
            "num_trajectories": 10,
        }
    }


def init_random_(model: OFTModel, seed: int) -> OFTModel:
    """Deterministic random weights: N(0, 0.02) matrices and embeddings, zero biases, unit norms and LayerScale."""
    gens: dict[torch.device, torch.Generator] = {}
    norm_weights = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm) or type(mod).__name__.endswith("RMSNorm"):
            norm_weights.add(f"{mod_name}.weight")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in norm_weights or name.endswith(".gamma"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                if p.device not in gens:
                    gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
                p.normal_(0.0, 0.02, generator=gens[p.device])
    return model


def random_model(
    size: str = "tiny", seed: int = 0, proprio_dim: int = 8, action_dim: int = 7, chunk_len: int = 8,
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
) -> tuple[OFTModel, dict]:
    """A randomly initialized network of ``size`` (built without a weight file) and its config.json dict."""
    cfg = checkpoint_config(size)
    if chunk_len != 8:
        cfg["num_actions_chunk"] = chunk_len
    spec = ModelSpec(
        timm_model_ids=tuple(cfg["timm_model_ids"]),
        timm_overrides=tuple(cfg.get("timm_overrides") or ()),
        image_size=224,
        text_config={k: v for k, v in cfg["text_config"].items() if k != "model_type"},
        proprio_dim=proprio_dim,
        action_dim=action_dim,
        chunk_len=chunk_len,
    )
    with torch.device("meta"):
        model = OFTModel(spec)
    model = model.to_empty(device=device).to(dtype)
    init_random_(model, seed)
    from .checkpoint import rebuild_buffers

    rebuild_buffers(model, device)
    return model.eval(), cfg


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0, size: str = "tiny") -> Path:
    """Write a random-weight checkpoint of ``size`` (default tiny) in the released layout; returns its path."""
    model, cfg = random_model(size, seed)
    return write_checkpoint(out_dir, model, cfg, tiny_statistics(), make_tiny_tokenizer_files(vocab_size=VOCAB))
