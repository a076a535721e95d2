"""OFTPolicy: the Policy contract over a loaded OpenVLA-OFT checkpoint, with SpecPrune pruning."""
from __future__ import annotations

import time

import numpy as np
import torch

from .checkpoint import BOUNDS, Checkpoint, CheckpointError, inspect_checkpoint, load_model
from .config import ConfigError, PolicyConfig, device_problem
from .model import OFTModel, SequenceLayout
from .preprocess import normalize, policy_frame
from .presets import PRESETS, PruningConfig
from .prompt import PromptTokenizer
from .pruning import SpecPruner
from .types import MODE_OFF, ActionChunk, InputError, Observation, StepStats

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _bounds(stats: dict, norm: str) -> tuple[np.ndarray, np.ndarray]:
    lo_key, hi_key = BOUNDS[norm]
    return np.asarray(stats[lo_key], dtype=np.float64), np.asarray(stats[hi_key], dtype=np.float64)


def normalize_proprio(proprio: np.ndarray, stats: dict, norm: str = "bounds_q99") -> np.ndarray:
    """``2 (x - lo) / (hi - lo + 1e-8) - 1`` where the mask is set, clipped to [-1, 1] (lo/hi: q01/q99 or min/max)."""
    lo, hi = _bounds(stats, norm)
    mask = np.asarray(stats.get("mask", np.ones_like(lo, dtype=bool)), dtype=bool)
    x = np.asarray(proprio, dtype=np.float64)
    return np.clip(np.where(mask, 2 * (x - lo) / (hi - lo + 1e-8) - 1, x), -1.0, 1.0)


def unnormalize_actions(actions: np.ndarray, stats: dict, norm: str = "bounds_q99") -> np.ndarray:
    """``0.5 (x + 1)(hi - lo + 1e-8) + lo`` where the mask is set (gripper passes through), no clipping."""
    lo, hi = _bounds(stats, norm)
    mask = np.asarray(stats.get("mask", np.ones_like(lo, dtype=bool)), dtype=bool)
    x = np.asarray(actions, dtype=np.float64)
    return np.where(mask, 0.5 * (x + 1) * (hi - lo + 1e-8) + lo, x)


def libero_gripper(actions: np.ndarray) -> np.ndarray:
    """Gripper column g in [0, 1] -> -sign(2g - 1): +1 closes, -1 opens (LIBERO convention)."""
    out = np.array(actions, dtype=np.float64, copy=True)
    out[..., -1] = -np.sign(2 * out[..., -1] - 1)
    return out


class OFTPolicy:
    """Implements :class:`specprune_ros.core.types.Policy` for one checkpoint."""

    def __init__(self, config: PolicyConfig, checkpoint: Checkpoint, model: OFTModel, pruning: PruningConfig | None = None) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.model = model
        self.unnorm_key = checkpoint.resolve_unnorm_key(config.unnorm_key)
        entry = checkpoint.stats[self.unnorm_key]
        self.action_stats = entry["action"]
        self.proprio_stats = entry.get("proprio")
        spec = checkpoint.spec
        self.views = tuple(config.views)
        self.proprio_dim = spec.proprio_dim
        if self.proprio_dim is not None and self.proprio_stats is None:
            raise InputError(f"statistics {self.unnorm_key!r} have no 'proprio' entry but the checkpoint takes proprio")
        self.action_dim = spec.action_dim
        self.chunk_len = spec.chunk_len
        try:
            self.tokenizer = PromptTokenizer(checkpoint.tokenizer_file)
        except Exception as err:  # noqa: BLE001 - the tokenizers library raises plain Exception
            detail = " ".join(str(err).split())[:300] or type(err).__name__
            raise CheckpointError(f"{checkpoint.tokenizer_file}: cannot load the tokenizer: {detail}") from None
        vocab = checkpoint.spec.text_config.get("vocab_size")
        if isinstance(vocab, int) and self.tokenizer.vocab_size > vocab:
            raise CheckpointError(f"{checkpoint.tokenizer_file}: {self.tokenizer.vocab_size} tokens, but the model's "
                                  f"vocab_size is {vocab}")
        limit = checkpoint.config.get("llm_max_length", 2048)
        self.max_prompt_tokens = limit if isinstance(limit, int) and limit > 0 else 2048
        self.device = torch.device(config.device)
        self.dtype = TORCH_DTYPES[config.dtype]
        self.preset = config.preset
        self.pruning = pruning if pruning is not None else PRESETS[config.preset]
        if config.proportional and self.pruning.enabled:
            self.pruning = self.pruning.replace(proportional=True, merge=config.merge)
        self.pruner = SpecPruner(self.pruning, n_layers=model.n_layers, views=self.views) if self.pruning.enabled else None

    # -- contract --------------------------------------------------------------------------------------------
    def reset(self) -> None:
        if self.pruner is not None:
            self.pruner.reset()

    def model_inputs(self, obs: Observation) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor | None, torch.Tensor, int, SequenceLayout]:
        """What the network takes for ``obs`` (validated): the policy-ready frames (each (224, 224, 3)), pixels
        (1, V*6, 224, 224), normalized proprio (1, P) or None, prompt ids (1, 1+P), the fixed prefix's length in
        prompt tokens, and the sequence layout."""
        obs.validate(self.views, self.proprio_dim, self.action_dim)
        frames = [policy_frame(obs.images[v], self.config.preprocess) for v in self.views]
        pixels = normalize(frames, self.checkpoint.spec.use_fused_vision_backbone).to(self.device, self.dtype)
        proprio = None
        if self.proprio_dim is not None:
            p = normalize_proprio(obs.proprio, self.proprio_stats, self.checkpoint.spec.action_normalization)
            proprio = torch.as_tensor(p, dtype=self.dtype, device=self.device)[None]  # (1, P)
        ids, prefix_len = self.tokenizer.encode(obs.instruction)
        if len(ids) > self.max_prompt_tokens:
            raise InputError(f"the instruction makes {len(ids)} prompt tokens; this checkpoint takes at most "
                             f"{self.max_prompt_tokens} (llm_max_length)")
        prompt_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, 1+P)
        return frames, pixels, proprio, prompt_ids, prefix_len, self.model.layout(len(self.views), len(ids) - 1)

    def infer(self, obs: Observation) -> ActionChunk:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        frames, pixels, proprio, prompt_ids, prefix_len, layout = self.model_inputs(obs)
        timings["preprocess"] = self._ms_since(t0)

        with torch.inference_mode():
            t = time.perf_counter()
            patches = self.model.embed_vision(pixels)  # (1, V*256, D)
            seq = self.model.assemble(patches, proprio, prompt_ids)  # (1, L, D)
            timings["vision"] = self._ms_since(t)

            t = time.perf_counter()
            hooks = None
            if self.pruner is not None:
                hooks = self.pruner.begin(layout, frames, prefix_len, obs.executed_actions, obs.ee_speed, self.chunk_len)
            timings["static_prune"] = self._ms_since(t)

            t = time.perf_counter()
            positions = torch.arange(seq.shape[1], device=self.device)[None]  # (1, L)
            final, _, lengths = self.model.run_layers(seq, positions, hooks)
            llm_ms = self._ms_since(t)
            pruner_ms = self.pruner.in_loop_ms if self.pruner is not None else 0.0
            timings["static_prune"] += pruner_ms
            timings["llm"] = llm_ms - pruner_ms

            t = time.perf_counter()
            normalized = self.model.action_head(self.model.readout(final, layout))  # (1, T, A)
            timings["head"] = self._ms_since(t)
        actions = unnormalize_actions(normalized.float().cpu().numpy().squeeze(0), self.action_stats, self.checkpoint.spec.action_normalization)  # (T, A)
        if not np.all(np.isfinite(actions)):  # e.g. a NaN in the weights: never hand out such a chunk
            raise FloatingPointError("the model produced NaN or inf actions; check the checkpoint's weights")
        if self.config.libero_gripper:
            actions = libero_gripper(actions)
        if self.pruner is not None:
            self.pruner.finish(actions)
        timings["total"] = self._ms_since(t0)
        stats = self._stats(layout, lengths, timings)
        return ActionChunk(actions=actions, dt=self.config.control_dt, stamp=obs.stamp, stats=stats)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _ms_since(self, t: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return (time.perf_counter() - t) * 1e3

    def _stats(self, layout, lengths: list[int], timings: dict[str, float]) -> StepStats:
        n_nonvisual = layout.length - layout.n_visual
        if self.pruner is not None:
            rec = self.pruner.record
            return StepStats(
                timings_ms=timings,
                tokens_per_layer=lengths,
                visual_tokens_per_layer=[n - n_nonvisual for n in lengths],
                kept_per_view=dict(rec.kept_per_view),
                kept_patches={k: list(v) for k, v in rec.kept_patches.items()},
                total_tokens=layout.length,
                mode=rec.mode,
                lookback=rec.lookback,
                requery=rec.requery,
                requery_after=rec.requery_after,
                preset=self.preset,
            )
        return StepStats(
            timings_ms=timings,
            tokens_per_layer=lengths,
            visual_tokens_per_layer=[n - n_nonvisual for n in lengths],
            kept_per_view={v: 256 for v in self.views},
            kept_patches={v: list(range(256)) for v in self.views},
            total_tokens=layout.length,
            mode=MODE_OFF,
            preset=self.preset,
        )


def build_policy(config: PolicyConfig, pruning: PruningConfig | None = None) -> OFTPolicy:
    """Load ``config.checkpoint`` strictly and wrap it as a Policy. ``pruning`` overrides the preset's knobs."""
    if not config.checkpoint:
        raise ValueError("no checkpoint given: set PolicyConfig.checkpoint to a checkpoint directory")
    ckpt = inspect_checkpoint(config.checkpoint)
    ckpt.resolve_unnorm_key(config.unnorm_key)  # fail before the (slow) weight load
    why = device_problem(config.device)
    if why:
        raise ConfigError(why)
    model = load_model(ckpt, device=config.device, dtype=TORCH_DTYPES[config.dtype])
    return OFTPolicy(config, ckpt, model, pruning)
