"""The OpenVLA-OFT network on stock timm + transformers, with an explicit decoder-layer loop.

Reads top to bottom: vision towers -> projector -> sequence assembly -> bidirectional Llama layers (called
one by one, so tokens can be dropped between layers while survivors keep their original RoPE position
ids) -> readout counted from the end -> L1-regression action head.

Dimension names: B batch, V views, L sequence length, D LLM width, T chunk length, A action dim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import timm
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.modeling_utils import AttentionInterface

PATCHES_PER_VIEW = 256  # 16 x 16 patches of 14 px on a 224 px image
GRID = 16
STOP_TOKEN_ID = 2
ATTN_IMPLEMENTATION = "specprune_sdpa"


# ----------------------------------------------------------------------------------------------------------
# Attention: fused SDPA for the whole sequence, plus explicit probabilities for a few query rows on request.
def _sdpa_with_row_scores(
    module: nn.Module,
    query: torch.Tensor,  # (B, H, L, hd), RoPE applied
    key: torch.Tensor,  # (B, Hkv, L, hd)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    score_rows: torch.Tensor | None = None,
    score_sink: list | None = None,
    **kwargs: Any,
):
    out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if score_rows is not None and score_sink is not None:
        keys = repeat_kv(key, module.num_key_value_groups)  # (B, H, L, hd)
        rows = query[:, :, score_rows]  # (B, H, R, hd)
        logits = rows.float() @ keys.float().transpose(-1, -2) * scaling  # (B, H, R, L)
        if attention_mask is not None:
            logits = logits + attention_mask[:, :, score_rows].float()
        score_sink.append(logits.softmax(dim=-1))
    return out


AttentionInterface.register(ATTN_IMPLEMENTATION, _sdpa_with_row_scores)


# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Architecture read from a checkpoint's config.json (+ shapes of the head files)."""

    timm_model_ids: tuple[str, ...]
    timm_overrides: tuple[dict, ...]
    image_size: int
    text_config: dict
    proprio_dim: int | None
    action_dim: int
    chunk_len: int
    use_fused_vision_backbone: bool = True
    action_normalization: str = "bounds_q99"  # "bounds_q99": q01/q99 (LIBERO); "bounds": min/max (ALOHA)
    raw_config: dict = field(default_factory=dict, compare=False)

    @property
    def llama_config(self) -> LlamaConfig:
        cfg = LlamaConfig(**self.text_config)
        cfg._attn_implementation = "sdpa"
        return cfg


def create_timm_tower(model_id: str, overrides: dict, image_size: int) -> nn.Module:
    kwargs = dict(pretrained=False, num_classes=0, img_size=image_size, act_layer=None)
    kwargs.update(overrides)
    return timm.create_model(model_id, **kwargs)


class VisionBackbone(nn.Module):
    """Fused DINOv2 + SigLIP towers. Features: output of the second-to-last block, prefix tokens dropped."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        ids, over = spec.timm_model_ids, spec.timm_overrides
        self.featurizer = create_timm_tower(ids[0], over[0] if over else {}, spec.image_size)
        if spec.use_fused_vision_backbone:
            self.fused_featurizer = create_timm_tower(ids[1], over[1] if len(over) > 1 else {}, spec.image_size)
        else:
            self.fused_featurizer = None

    @property
    def embed_dim(self) -> int:
        extra = self.fused_featurizer.embed_dim if self.fused_featurizer is not None else 0
        return self.featurizer.embed_dim + extra

    @staticmethod
    def _features(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
        index = len(tower.blocks) - 2
        (out,) = tower.forward_intermediates(x, indices=[index], intermediates_only=True, norm=False, output_fmt="NLC",
                                            stop_early=True)
        return out  # (B, 256, C)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, V*6, 224, 224) -> (B, V*256, C_dino + C_siglip)."""
        per_view = 6 if self.fused_featurizer is not None else 3
        views = torch.split(pixel_values, per_view, dim=1)
        feats = []
        for img in views:
            if self.fused_featurizer is not None:
                dino, siglip = torch.split(img, [3, 3], dim=1)
                feats.append(torch.cat([self._features(self.featurizer, dino), self._features(self.fused_featurizer, siglip)], dim=2))
            else:
                feats.append(self._features(self.featurizer, img))
        return torch.cat(feats, dim=1)


class Projector(nn.Module):
    """no-align+fused-gelu-mlp: fc1 C->4C, GELU, fc2 4C->D, GELU, fc3 D->D."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(nn.functional.gelu(self.fc2(nn.functional.gelu(self.fc1(x)))))


class ProprioProjector(nn.Module):
    def __init__(self, proprio_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class MLPResNetBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.mlp_resnet_blocks = nn.ModuleList([MLPResNetBlock(hidden_dim) for _ in range(num_blocks)])
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """(B, T*A, D) action hidden states -> (B, T, A) normalized actions."""

    def __init__(self, llm_dim: int, action_dim: int, chunk_len: int) -> None:
        super().__init__()
        self.action_dim, self.chunk_len = action_dim, chunk_len
        self.model = MLPResNet(num_blocks=2, input_dim=llm_dim * action_dim, hidden_dim=llm_dim, output_dim=action_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        B = hidden.shape[0]
        x = hidden.reshape(B, self.chunk_len, -1)  # (B, T, A*D), timestep-major
        return self.model(x)  # (B, T, A)


# ----------------------------------------------------------------------------------------------------------
class LayerHooks(Protocol):
    """What the layer loop asks a pruner. Positions are indices into the CURRENT (shrunk) sequence."""

    def score_rows(self, layer: int, position_ids: torch.Tensor) -> torch.Tensor | None:
        """Query rows (current positions) whose attention probabilities are needed at ``layer``, or None.

        ``position_ids`` (B, L') are the ORIGINAL positions of the tokens entering the layer.
        """

    def after_layer(self, layer: int, probs: torch.Tensor | None, position_ids: torch.Tensor) -> torch.Tensor | None:
        """Given ``layer``'s (B, H, R, L') probabilities, return current positions to keep, or None.

        Positions are 1-D (the same for every sample) or (B, L'') (one row per sample, as many in each).
        """

    # optional: key_bias(layer, position_ids) -> (L',) tensor or None, added to every query's attention logits over
    # the keys entering ``layer`` (SpecPruner's proportional attention); hooks without it add nothing.
    # optional: merge(hidden, keep, position_ids) -> hidden, applied before a 1-D ``keep`` gathers (SpecPruner's merge)


@dataclass
class SequenceLayout:
    """Where each token group sits in the full (unpruned) sequence of length L."""

    n_views: int
    has_proprio: bool
    prompt_len: int  # P: prompt ids after BOS, including the trailing 29871
    n_action_tokens: int  # T*A placeholders

    @property
    def vis_start(self) -> int:
        return 1

    @property
    def n_visual(self) -> int:
        return self.n_views * PATCHES_PER_VIEW

    @property
    def prompt_start(self) -> int:
        return 1 + self.n_visual + int(self.has_proprio)

    @property
    def length(self) -> int:
        return self.prompt_start + self.prompt_len + self.n_action_tokens + 1

    @property
    def action_start(self) -> int:
        return self.length - 1 - self.n_action_tokens

    @property
    def readout_from_end(self) -> tuple[int, int]:
        """(start, stop) offsets from the end: the last prompt token and placeholders 0..T*A-2."""
        return -(self.n_action_tokens + 2), -2

    def prompt_positions(self, prefix_len: int = 0) -> torch.Tensor:
        """Positions of the prompt after its first ``prefix_len`` ids (the fixed prefix: the rest are the task
        words); 0 = the whole prompt."""
        return torch.arange(self.prompt_start + prefix_len, self.prompt_start + self.prompt_len)

    def action_positions(self) -> torch.Tensor:
        """Positions of the action placeholders."""
        return torch.arange(self.action_start, self.action_start + self.n_action_tokens)

    def view_of(self, position: torch.Tensor) -> torch.Tensor:
        """View index of visual positions (full-sequence indices)."""
        return (position - self.vis_start) // PATCHES_PER_VIEW

    def visual_view(self, position: torch.Tensor) -> torch.Tensor:
        """View index of each position (full-sequence indices), -1 where the token is not a patch."""
        visual = (position >= self.vis_start) & (position < self.vis_start + self.n_visual)
        return torch.where(visual, self.view_of(position), torch.full_like(position, -1))


class OFTModel(nn.Module):
    """Module names match the released checkpoint keys (after mapping LayerScale names)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        llama_cfg = spec.llama_config
        self.vision_backbone = VisionBackbone(spec)
        self.projector = Projector(self.vision_backbone.embed_dim, llama_cfg.hidden_size)
        self.language_model = LlamaForCausalLM(llama_cfg)
        self.language_model.config._attn_implementation = ATTN_IMPLEMENTATION
        self.action_head = L1RegressionActionHead(llama_cfg.hidden_size, spec.action_dim, spec.chunk_len)
        self.proprio_projector = ProprioProjector(spec.proprio_dim, llama_cfg.hidden_size) if spec.proprio_dim else None

    # -- pieces --------------------------------------------------------------------------------------------
    @property
    def llm(self) -> nn.Module:
        return self.language_model.model

    @property
    def n_layers(self) -> int:
        return len(self.llm.layers)

    def layout(self, n_views: int, prompt_len: int) -> SequenceLayout:
        return SequenceLayout(n_views, self.proprio_projector is not None, prompt_len, self.spec.chunk_len * self.spec.action_dim)

    def embed_vision(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, V*6, 224, 224) -> projected patch embeddings (B, V*256, D)."""
        return self.projector(self.vision_backbone(pixel_values))

    def assemble(self, patch_emb: torch.Tensor, proprio: torch.Tensor | None, prompt_ids: torch.Tensor) -> torch.Tensor:
        """``BOS | patches | proprio | prompt | zero placeholders | stop`` -> (B, L, D).

        ``prompt_ids`` (B, 1+P) starts with BOS and ends with 29871; ``proprio`` is already normalized.
        """
        B, D = patch_emb.shape[0], patch_emb.shape[2]
        embed = self.llm.embed_tokens
        text = embed(prompt_ids)  # (B, 1+P, D)
        parts = [text[:, :1], patch_emb]
        if self.proprio_projector is not None:
            if proprio is None:
                raise ValueError("this checkpoint has a proprio projector: a proprio state is required")
            parts.append(self.proprio_projector(proprio.to(patch_emb.dtype))[:, None, :])  # (B, 1, D)
        n_act = self.spec.chunk_len * self.spec.action_dim
        stop = embed(torch.full((B, 1), STOP_TOKEN_ID, dtype=torch.long, device=prompt_ids.device))
        parts += [text[:, 1:], patch_emb.new_zeros(B, n_act, D), stop]
        return torch.cat(parts, dim=1)

    def run_layers(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, hooks: LayerHooks | None = None,
        taps: dict[int, torch.Tensor | None] | None = None, depth: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Bidirectional pass through every decoder layer (or the first ``depth`` of them).

        hidden (B, L, D), position_ids (B, L) -> final-normed hidden (B, L', D), surviving position ids (B, L')
        and the sequence length that entered each layer. ``hooks`` may shrink the sequence after any layer.
        ``taps`` (layer index -> None) is filled with the hidden states (B, L, D) leaving those layers, before
        any pruning (training probes read them); ``depth`` stops after that many layers (training probes of
        the first layers need no more).
        """
        lengths = []
        for i, layer in enumerate(self.llm.layers[:depth]):
            lengths.append(hidden.shape[1])
            rows = hooks.score_rows(i, position_ids) if hooks is not None else None
            sink: list = []
            cos_sin = self.llm.rotary_emb(hidden, position_ids=position_ids)
            key_bias = getattr(hooks, "key_bias", None)
            bias = key_bias(i, position_ids) if key_bias is not None else None  # (L',) added to every row's logits
            mask = None if bias is None else bias.to(hidden.dtype)[None, None, None, :].expand(1, 1, hidden.shape[1], -1)
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_embeddings=cos_sin,
                is_causal=False,
                score_rows=rows,
                score_sink=sink if rows is not None else None,
            )
            if taps is not None and i in taps:
                taps[i] = hidden
            if hooks is not None:
                keep = hooks.after_layer(i, sink[0] if sink else None, position_ids)
                if keep is not None and keep.dim() == 2:  # per sample (B, L'): training's token dropout
                    hidden = hidden.gather(1, keep[..., None].expand(-1, -1, hidden.shape[-1]))
                    position_ids = position_ids.gather(1, keep)
                elif keep is not None:
                    merge = getattr(hooks, "merge", None)
                    if merge is not None:  # the pruner may fold the dropped tokens into the kept ones first
                        hidden = merge(hidden, keep, position_ids)
                    hidden = hidden[:, keep]  # (B, L', D)
                    position_ids = position_ids[:, keep]
        return self.llm.norm(hidden), position_ids, lengths

    def readout(self, final_hidden: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        start, stop = layout.readout_from_end
        n = final_hidden.shape[1]
        return final_hidden[:, n + start : n + stop]  # (B, T*A, D)

    def forward(
        self,
        pixel_values: torch.Tensor,
        proprio: torch.Tensor | None,
        prompt_ids: torch.Tensor,
        hooks: LayerHooks | None = None,
    ) -> torch.Tensor:
        """Full pass without timing/statistics: normalized actions (B, T, A). Used by training and tests."""
        n_views = pixel_values.shape[1] // (6 if self.spec.use_fused_vision_backbone else 3)
        layout = self.layout(n_views, prompt_ids.shape[1] - 1)
        seq = self.assemble(self.embed_vision(pixel_values), proprio, prompt_ids)
        pos = torch.arange(seq.shape[1], device=seq.device)[None].expand(seq.shape[0], -1)
        final, _, _ = self.run_layers(seq, pos, hooks)
        return self.action_head(self.readout(final, layout))
