"""``specprune-train``: train a small OpenVLA-OFT-architecture policy on the test-bed task, on a CPU.

The network is the project's own :class:`~specprune_ros.core.model.OFTModel` (fused DINOv2 + SigLIP timm
towers made tiny through ``timm_overrides``, the 3-layer GELU projector, the proprio projector, a small Llama
run bidirectionally, the L1-regression MLP-ResNet head) with the real token layout:
``BOS | 256 primary | 256 wrist | proprio | prompt | 56 placeholders | stop``. Inputs are made exactly as
:class:`~specprune_ros.core.policy.OFTPolicy` makes them at inference (same frame preprocessing, proprio
normalization and prompt tokenizer), and the result is written in the released checkpoint layout, so the
normal loader (``build_policy``) runs it with every pruning preset.

The tokenizer is Llama-2-shaped (ids 0-2 special, "▁" = 29871, <PAD> = 32000, byte fallback) with whole-word
tokens for the prompt template and the task's vocabulary, so a prompt takes about 20 tokens like the real
one does.

Training is seeded (model init, data, batch order: batch ``k`` is drawn from ``default_rng([seed, k])``),
shows a tqdm progress bar, saves a resumable state every ``--save-every-min`` minutes and on Ctrl-C, and
stops at ``--steps`` or after ``--max-minutes``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from transformers.modeling_utils import AttentionInterface

from ..cli.common import ArgumentParser
from ..core.checkpoint import inspect_checkpoint, load_model, write_checkpoint
from ..core.config import PreprocessConfig, non_finite
from ..core.model import PATCHES_PER_VIEW, ModelSpec, OFTModel, SequenceLayout
from ..core.policy import normalize_proprio
from ..core.preprocess import normalize, policy_frame
from ..core.prompt import PROMPT_TEMPLATE, PromptTokenizer, make_tiny_tokenizer_files
from ..core.tiny import VOCAB, make_checkpoint_config
from .data import CHUNK_LEN, UNNORM_KEY, Episode, check_perturbations, dataset_statistics, generate
from .expert import expert_plan
from .task import OBJECT_COLORS, PLATE_COLORS, SHAPES, TEMPLATES, VIEWS, Scene, TabletopTask, TaskConfig

#: attention function of the Llama layers while training (:func:`training_attention`)
TRAIN_ATTENTION = "specprune_train_math"
#: resumable state and scratch files live in <out_dir>/WORK_DIR (not part of the checkpoint)
WORK_DIR = "train_work"
STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Training run parameters (all recorded in the checkpoint directory's ``train_config.json``).

    Attributes:
        out_dir: where the checkpoint (released layout) and the resumable state go.
        episodes: expert demonstrations to generate.
        data_seed: picks the demonstrations' task seeds (disjoint from evaluation seeds).
        noise: std of the noise injected into executed demonstration actions (action units).
        excursion_rate: per transport step, probability of a random full-speed excursion in the
            demonstrations (``data.collect_episode``), so they show the way back from off-course states.
        fine_excursion_rate: per aligning step, probability of a slow sideways drift over the object, in some
            cases with a missed grasp (``data.collect_episode``): the way back to the object, and reopening.
        late_release: per demonstration, probability that the release comes 1-6 steps late
            (``data.collect_episode``): states past the release point, labelled "let go".
        seed: model initialization and batch order.
        steps: optimizer steps.
        batch_size: samples per step (one prompt length per batch).
        lr: peak learning rate (linear warm-up, cosine decay to 10%).
        weight_decay: AdamW weight decay.
        vit_dim, vit_depth, vit_heads: both vision towers' width, depth and heads.
        llm_hidden, llm_layers, llm_heads, llm_intermediate: the Llama's size.
        val_episodes: held-out demonstrations for the validation L1 loss.
        save_every_min: minutes between resumable saves.
        max_minutes: stop (and write the checkpoint) after this many minutes of training, 0 = no limit.
        relabel: probability that a training sample names another object (and, independently, the other
            plate) than its demonstration, labelled with the expert's plan for that instruction (:class:`Batcher`).
        aux_weight: weight of the training-only grounding probes (:class:`AuxHeads`), 0 = plain L1.
        probe_layer: the patch probe also reads the visual tokens leaving this decoder layer (0-based; -1 =
            final states only), so that the layers after it can route on what the instruction names.
        attention_layer: decoder layer (0-based; -1 = none) at which the instruction's object words (colour and
            shape) are taught to attend to the named object's patches (:func:`attention_grounding_loss`, weight
            ``aux_weight``). Pick a layer whose text attention the pruning does not read (2 of 6: V_local scores
            layers 0 and 1, V_global layers 3 and 5).
        ground_steps: steps of the grounding warm-up before the action training (``steps``): only the
            grounding losses (the patch probe at ``probe_layer``, the attention at ``attention_layer``) are
            trained, on the layers up to them, with every object of a scene named equally often
            (:func:`grounding_loss`); 0 = none.
        token_drop: probability that an action-training step runs on a random subset of the visual tokens
            (:func:`token_drop_positions`): each view keeps between ``token_drop_min`` and 256 of its patches
            (one count per view and step, uniform; which ones, uniform per sample), dropped after decoder layer
            ``token_drop_layer`` as the pruning drops them, survivors keeping their position ids. A network
            trained from scratch on full sequences only has never seen a thinned one, while a large pretrained
            one tolerates it; the random choice teaches tolerance without telling which tokens matter. 0 = off.
        token_drop_min: fewest patches per view a token-drop step keeps.
        token_drop_layer: decoder layer (0-based) after which a token-drop step drops the patches.
        premise_weight: weight of :func:`premise_loss`: the task words' attention over each view's patches at
            decoder layers 0 and 1 (what V_local ranks by) is taught to match the attention the action placeholders
            pay those patches in the layers after them (the target detached), so that the first two layers tell
            which tokens the read-out uses, as the method assumes of released checkpoints. 0 = off.
        sparse_weight: weight of :func:`readout_entropy_loss`: the normalized entropy of each head's attention row of
            the action placeholders in the layers after the first two, so that the read-out gathers from few tokens
            (any: a sink token or a few patches that collected their neighbours' content in layers 0-1) instead
            of averaging over hundreds of patches, which no subset but a uniform one preserves. 0 = off.
        readout_weight: weight of :func:`readout_grounding_loss`: in the decoder layers after ``attention_layer``,
            the action placeholders' attention is taught to fall on the named object's and the named plate's
            patches, where the actions come from (otherwise only the L1 loss finds that routing). It is learned
            within minutes, but did not by itself end the from-scratch loss plateau (docs/testbed.md).
            Needs ``attention_layer`` >= 0 (the layer where the object words find the named object). 0 = off.
        init_from: a checkpoint directory of the same architecture (released layout, e.g. an earlier run's
            output) to start from instead of a fresh initialization: its weights and its dataset statistics
            (the action and proprio normalization it learned with) are taken, the optimizer, the grounding
            probes and the schedule start anew. "" = fresh initialization.
        fp16: store the exported weights in float16 (halves the size; loads as float32).
        bf16: run the training forward pass under bfloat16 autocast where the CPU computes bfloat16 natively
            (float32 weights and optimizer; 1.2x faster with AVX512-BF16); elsewhere training runs in float32,
            since emulated bfloat16 matrix products are ~8x slower than float32 ones (15 s against 1.8 s per
            step on a 2-core AVX2 CPU).
        threads: torch CPU threads.
    """

    out_dir: str = "testbed_policy"
    episodes: int = 400
    data_seed: int = 0
    noise: float = 0.15
    excursion_rate: float = 0.04
    fine_excursion_rate: float = 0.0
    late_release: float = 0.0
    seed: int = 0
    steps: int = 2400
    batch_size: int = 8
    lr: float = 6e-4
    weight_decay: float = 0.01
    vit_dim: int = 48
    vit_depth: int = 3
    vit_heads: int = 2
    llm_hidden: int = 128
    llm_layers: int = 6
    llm_heads: int = 4
    llm_intermediate: int = 256
    val_episodes: int = 10
    save_every_min: float = 4.0
    max_minutes: float = 0.0
    relabel: float = 0.0
    aux_weight: float = 0.5
    probe_layer: int = -1
    attention_layer: int = -1
    ground_steps: int = 0
    token_drop: float = 0.0
    token_drop_min: int = 16
    token_drop_layer: int = 0
    premise_weight: float = 0.0
    sparse_weight: float = 0.0
    readout_weight: float = 0.0
    init_from: str = ""
    fp16: bool = True
    bf16: bool = True
    threads: int = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # NaN would pass every comparison below (and mean "no limit", "no saves", ...)
            if non_finite(getattr(self, f.name)):
                raise ValueError(f"{f.name}={getattr(self, f.name)} must be a finite number")
        positive = ("episodes", "steps", "batch_size", "vit_dim", "vit_depth", "vit_heads", "llm_hidden", "llm_layers",
                    "llm_heads", "llm_intermediate", "threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name, most in (("episodes", 100_000), ("batch_size", 4096), ("steps", 10**9)):
            if getattr(self, name) > most:
                raise ValueError(f"{name}={getattr(self, name)} must be <= {most}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed={self.seed} must lie in [0, 2**32)")
        if not 0 <= self.data_seed < 1000:  # as data.generate: task seeds 1_000_000 + data_seed * 100_000 + k
            raise ValueError(f"data_seed={self.data_seed} must lie in [0, 1000)")
        for name in ("weight_decay", "noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.vit_depth < 2:
            raise ValueError(f"vit_depth={self.vit_depth} must be >= 2 (features come from the second-to-last block)")
        if self.vit_dim % self.vit_heads:
            raise ValueError(f"vit_dim={self.vit_dim} must be divisible by vit_heads={self.vit_heads}")
        if self.llm_hidden % self.llm_heads:
            raise ValueError(f"llm_hidden={self.llm_hidden} must be divisible by llm_heads={self.llm_heads}")
        if self.llm_layers < 2:
            raise ValueError(f"llm_layers={self.llm_layers} must be >= 2 (pruning scores layers 0 and 1)")
        check_perturbations(self.excursion_rate, self.fine_excursion_rate, self.late_release)
        if not -1 <= self.probe_layer < self.llm_layers - 1:
            raise ValueError(f"probe_layer={self.probe_layer} must lie in [-1, llm_layers - 2 = {self.llm_layers - 2}]"
                             " (-1: final states only)")
        if not 0 <= self.relabel <= 1:
            raise ValueError(f"relabel={self.relabel} must lie in [0, 1]")
        if not -1 <= self.attention_layer < self.llm_layers:
            raise ValueError(f"attention_layer={self.attention_layer} must lie in [-1, llm_layers - 1 = {self.llm_layers - 1}]")
        grounded = (self.probe_layer >= 0 or self.attention_layer >= 0) and self.aux_weight > 0
        if self.ground_steps < 0 or (self.ground_steps and not grounded):
            raise ValueError(f"ground_steps={self.ground_steps} must be >= 0, and > 0 only with a probe_layer or "
                             f"attention_layer >= 0 and aux_weight > 0 (got probe_layer={self.probe_layer}, "
                             f"attention_layer={self.attention_layer}, aux_weight={self.aux_weight})")
        if not 0 <= self.token_drop <= 1:
            raise ValueError(f"token_drop={self.token_drop} must lie in [0, 1]")
        if not 1 <= self.token_drop_min <= PATCHES_PER_VIEW:
            raise ValueError(f"token_drop_min={self.token_drop_min} must lie in [1, {PATCHES_PER_VIEW}]")
        if not 0 <= self.token_drop_layer < self.llm_layers - 1:
            raise ValueError(f"token_drop_layer={self.token_drop_layer} must lie in [0, llm_layers - 2 = "
                             f"{self.llm_layers - 2}]")
        for name in ("aux_weight", "premise_weight", "sparse_weight", "readout_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if (self.premise_weight or self.sparse_weight) and self.llm_layers < 3:
            raise ValueError(f"premise_weight and sparse_weight need llm_layers >= 3 (layers after the first two), "
                             f"got {self.llm_layers}")
        if self.readout_weight and not (0 <= self.attention_layer < self.llm_layers - 1 and self.aux_weight > 0):
            raise ValueError(f"readout_weight needs aux_weight > 0 and an attention_layer in [0, llm_layers - 2 = "
                             f"{self.llm_layers - 2}] (the read-out is grounded in the layers after it), got "
                             f"aux_weight={self.aux_weight}, attention_layer={self.attention_layer}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr={self.lr} must lie in (0, 1)")
        if self.val_episodes < 0 or self.max_minutes < 0 or self.save_every_min <= 0:
            raise ValueError("val_episodes and max_minutes must be >= 0 and save_every_min > 0, got "
                             f"{self.val_episodes}, {self.max_minutes}, {self.save_every_min}")


# ----------------------------------------------------------------------------------------------------------
def task_words() -> list[str]:
    """Words of the prompt template and of every instruction the task can produce."""
    text = " ".join([PROMPT_TEMPLATE.format(task=""), *TEMPLATES, *OBJECT_COLORS, *PLATE_COLORS, *SHAPES])
    for ch in "{}?\n":
        text = text.replace(ch, " ")
    words = sorted({w for w in text.split() if w not in ("obj", "plate}", "task")} | {"plate"})
    return words


def checkpoint_config(cfg: TrainConfig) -> dict:
    """config.json of the trained model (released layout + ``timm_overrides``)."""
    tower = {"embed_dim": cfg.vit_dim, "depth": cfg.vit_depth, "num_heads": cfg.vit_heads}
    text = {
        "hidden_size": cfg.llm_hidden, "intermediate_size": cfg.llm_intermediate, "num_hidden_layers": cfg.llm_layers,
        "num_attention_heads": cfg.llm_heads, "num_key_value_heads": cfg.llm_heads,
    }
    return make_checkpoint_config([tower, dict(tower)], text, chunk_len=CHUNK_LEN)


#: std of the freshly initialized token embeddings (see :func:`build_model`)
EMBED_STD = 0.5


def build_model(cfg: TrainConfig) -> tuple[OFTModel, dict]:
    """Freshly initialized network (seeded by ``cfg.seed``) and its config.json."""
    config = checkpoint_config(cfg)
    spec = ModelSpec(
        timm_model_ids=tuple(config["timm_model_ids"]),
        timm_overrides=tuple(config["timm_overrides"]),
        image_size=224,
        text_config={k: v for k, v in config["text_config"].items() if k != "model_type"},
        proprio_dim=8, action_dim=7, chunk_len=CHUNK_LEN,
    )
    torch.manual_seed(cfg.seed)
    model = OFTModel(spec)
    with torch.no_grad():  # timm's DINOv2 LayerScale starts at 1e-5: blocks would begin as near-identities
        for name, p in model.named_parameters():
            if name.endswith((".ls1.gamma", ".ls2.gamma")):
                p.fill_(0.1)
        # timm starts the learned position embeddings at std 0.02, ~20x below the patch embeddings: the
        # towers would begin nearly position-blind, and the Llama's 1-D RoPE over the row-major patch order
        # only tells rows apart. A 2-D sine-cosine table gives both image axes from the first step.
        for module in model.modules():
            grid = getattr(getattr(module, "patch_embed", None), "grid_size", None)
            pos = getattr(module, "pos_embed", None)
            if grid is None or not isinstance(pos, torch.nn.Parameter) or pos.shape[-1] % 4:
                continue
            table = sincos_2d(int(grid[0]), int(grid[1]), pos.shape[-1])  # (H*W, D)
            pos[0, pos.shape[1] - table.shape[0]:] = table
        # Llama starts its token embeddings at std 0.02, 4x below the projected patches (0.07 at the start,
        # 0.8 once trained) and below what the first attention layer adds to every position: the prompt
        # tokens' identity was drowned in the residual stream after layer 0, and trained policies ignored the
        # instruction (their first chunk did not change with the object named). Prompt tokens start at the
        # scale the visual tokens reach instead.
        model.llm.embed_tokens.weight.normal_(0.0, EMBED_STD)
    return model, config


def sincos_2d(rows: int, cols: int, dim: int) -> torch.Tensor:
    """(rows*cols, dim) 2-D sine-cosine position table, row-major: dim/4 frequencies each of sin/cos(row), sin/cos(col)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij")
    r, c = r.reshape(-1, 1) * omega, c.reshape(-1, 1) * omega  # (H*W, dim/4)
    return torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], dim=1).float()


# ----------------------------------------------------------------------------------------------------------
class Batcher:
    """Turns episodes into model inputs exactly as OFTPolicy does at inference.

    With ``relabel`` > 0 a sample names, with that probability each, another object of its scene (when none
    is held, or always with ``relabel_held``) and the other plate than its demonstration did, and is labelled with the expert's plan for that
    instruction from the same state. The same frames then come with different instructions and different
    actions. Without it the policy never learns to read the object's name: most demonstration frames show
    the gripper at or over the named object, and the named object is also the one whose colour and shape
    the distractors share, so the named object's patches and the actions can be found from the image alone
    (a trained policy's first chunk pointed at the same object whatever object its instruction named).
    """

    def __init__(self, episodes: list[Episode], stats: dict, tokenizer: PromptTokenizer,
                 task_config: TaskConfig = TaskConfig(), preprocess: PreprocessConfig = PreprocessConfig(),
                 relabel: float = 0.0, relabel_held: bool = False) -> None:
        if not 0 <= relabel <= 1:
            raise ValueError(f"relabel={relabel} must lie in [0, 1]")
        self.relabel_held = relabel_held
        self.object_word_ids = _word_ids(tokenizer, [*OBJECT_COLORS, *SHAPES])
        self.plate_word_ids = _word_ids(tokenizer, list(PLATE_COLORS))
        self.episodes = episodes
        self.stats = stats
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.relabel = relabel
        self.tasks = {}
        self.task_config = task_config
        # bucket (episode, step) pairs by prompt length: a batch needs one length
        self.buckets: dict[int, list[tuple[int, int]]] = {}
        for i, ep in enumerate(episodes):
            n = len(tokenizer.encode(ep.instruction)[0])
            self.buckets.setdefault(n, []).extend((i, t) for t in range(len(ep)))
        self.lengths = sorted(self.buckets)
        sizes = np.array([len(self.buckets[n]) for n in self.lengths], dtype=np.float64)
        self.weights = sizes / sizes.sum()

    def _task(self, seed: int) -> TabletopTask:
        if seed not in self.tasks:
            self.tasks[seed] = TabletopTask(seed, self.task_config)
        return self.tasks[seed]

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        n = self.lengths[rng.choice(len(self.lengths), p=self.weights)]
        bucket = self.buckets[n]
        picks = [bucket[j] for j in rng.integers(len(bucket), size=batch_size)]
        # per sample: (other object's offset or 0, other plate?) drawn whether or not relabelling is on
        draws = rng.random((batch_size, 2)) < self.relabel
        offsets = rng.integers(1, 1 + max(1, self.task_config.n_distractors), size=batch_size)
        relabels = [(int(offsets[k]) if draws[k, 0] else 0, bool(draws[k, 1])) for k in range(batch_size)]
        return self.make(picks, relabels)

    def make(self, picks: list[tuple[int, int]], relabels: list[tuple[int, bool]] | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for (episode, step) pairs; ``relabels`` gives per pair (object offset, other plate)."""
        pixels, proprio, ids, target, labels, where, words, plate_words = [], [], [], [], [], [], [], []
        a_stats = self.stats["action"]
        lo, hi = np.asarray(a_stats["q01"]), np.asarray(a_stats["q99"])
        mask = np.asarray(a_stats["mask"], dtype=bool)
        for k, (i, t) in enumerate(picks):
            ep = self.episodes[i]
            task = self._task(ep.seed)
            task.restore(ep.snapshots[t])
            frames = task.render()
            scene = task.scene
            offset, other_plate = relabels[k] if relabels is not None else (0, False)
            if task.state.held >= 0 and not self.relabel_held:
                offset = 0  # the object in the hand keeps its name
            instruction, chunk = ep.instruction, ep.action_chunk(t)  # (T, A) robot units
            try:
                if offset or other_plate:
                    task.scene = relabelled_scene(scene, offset, other_plate)
                    instruction = task.scene.instruction
                    chunk = expert_plan(task, CHUNK_LEN)
                pixels.append(normalize([policy_frame(frames[v], self.preprocess) for v in VIEWS]))  # (1, 12, 224, 224)
                proprio.append(normalize_proprio(ep.proprio[t], self.stats["proprio"]))
                prompt, prefix_len = self.tokenizer.encode(instruction)
                ids.append(prompt)
                words.append(np.isin(ids[-1][1:], self.object_word_ids))
                plate_words.append(np.isin(ids[-1][1:], self.plate_word_ids))
                norm = np.where(mask, 2 * (chunk - lo) / (hi - lo + 1e-8) - 1, chunk)
                target.append(np.clip(norm, -1.0, 1.0))
                labels.append(np.concatenate([patch_labels(task, v, self.preprocess) for v in VIEWS]))
                sc = task.scene
                obj_xy, ee_xy, plate_xy = task.state.object_pos[sc.target, :2], task.state.ee[:2], sc.plate_xy[sc.goal_plate]
                where.append(np.concatenate([plate_xy, obj_xy, obj_xy - ee_xy, ee_xy, plate_xy - ee_xy]) / 0.25)
            finally:
                task.scene = scene
        return {
            "pixel_values": torch.cat(pixels),  # (B, 12, 224, 224)
            "proprio": torch.tensor(np.stack(proprio), dtype=torch.float32),  # (B, 8)
            "prompt_ids": torch.tensor(ids, dtype=torch.long),  # (B, 1+P)
            "actions": torch.tensor(np.stack(target), dtype=torch.float32),  # (B, T, A)
            "patch_labels": torch.tensor(np.stack(labels), dtype=torch.long),  # (B, V*256)
            "where": torch.tensor(np.stack(where), dtype=torch.float32),  # (B, WHERE_DIM)
            "object_words": torch.tensor(np.stack(words)),  # (B, P) prompt positions of the object's name
            "plate_words": torch.tensor(np.stack(plate_words)),  # (B, P) prompt position of the plate's colour
            "prefix_len": torch.tensor(prefix_len),  # prompt tokens of the fixed prefix (the template's, all alike)
        }


def _word_ids(tokenizer: PromptTokenizer, words: list[str]) -> list[int]:
    """Token ids of whole words (``▁word``); every word must be one token of ``tokenizer``."""
    ids = sorted({tokenizer.tok.token_to_id("\u2581" + w) for w in words} - {None})
    if len(ids) != len(words):
        raise ValueError(f"the tokenizer lacks a single token for some of the words {words}")
    return ids


def relabelled_scene(scene: Scene, object_offset: int, other_plate: bool) -> Scene:
    """The scene with the instruction naming object ``target + object_offset`` (cyclic) and, if asked, the other plate."""
    target = (scene.target + object_offset) % len(scene.objects)
    plate = (scene.goal_plate + 1) % len(scene.plate_colors) if other_plate else scene.goal_plate
    old_obj, new_obj = scene.objects[scene.target].name, scene.objects[target].name
    old_plate, new_plate = scene.plate_colors[scene.goal_plate], scene.plate_colors[plate]
    text = scene.instruction.replace(f"the {old_obj} ", f"the {new_obj} ").replace(f"the {old_plate} plate", f"the {new_plate} plate")
    return dataclasses.replace(scene, target=target, goal_plate=plate, instruction=text)


def _math_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    score_rows: torch.Tensor | None = None, score_sink: list | None = None,
                    **kwargs) -> tuple[torch.Tensor, None]:
    """softmax(Q K^T * scaling) V written out, in the dtype of its inputs (bfloat16 under autocast).

    (B, H, L, hd) in -> (B, L, H, hd) out, like the other attention functions of transformers. With
    ``score_rows`` (1-D query positions) and ``score_sink`` (a list), those rows' probabilities (B, H, R, L)
    are appended to the sink, with their gradient (training losses on attention read them).
    """
    groups = module.num_key_value_groups
    keys = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    values = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    logits = (query * scaling) @ keys.transpose(-1, -2)  # (B, H, L, L); scaling the queries, not the L x L logits
    if attention_mask is not None:
        logits = logits + attention_mask
    probs = logits.softmax(dim=-1)
    if score_rows is not None and score_sink is not None:
        score_sink.append(probs[:, :, score_rows])
    return (probs @ values).transpose(1, 2).contiguous(), None


AttentionInterface.register(TRAIN_ATTENTION, _math_attention)


@contextlib.contextmanager
def training_attention(model: OFTModel, written_out: bool = True):
    """Explicit-softmax attention in the Llama layers and the timm towers while training (restored after), for
    training under bfloat16 autocast; ``written_out=False`` keeps the model's own attention (for float32).

    With native bfloat16 (AVX512-BF16), torch's fused attention kernel is slow at these sizes (4 heads of 32
    over ~595 tokens; 2 heads of 24 over 256): forward + backward of one Llama layer's attention took 45 ms
    fused against 24 ms written out (8 samples), a training step about 1.3x less. In float32 it is the other
    way round: 58 ms fused against 130 ms written out on a 2-core AVX2 CPU, and the model's own attention (fused
    SDPA, plus the probabilities of the rows the losses read: ``_sdpa_with_row_scores``) is used. The results are
    the same up to rounding; inference keeps the fused kernel.
    """
    if not written_out:
        yield model
        return
    config = model.language_model.config
    towers = [m for m in model.vision_backbone.modules() if hasattr(m, "fused_attn")]
    before = config._attn_implementation, [m.fused_attn for m in towers]
    config._attn_implementation = TRAIN_ATTENTION
    for m in towers:
        m.fused_attn = False
    try:
        yield model
    finally:
        config._attn_implementation = before[0]
        for m, fused in zip(towers, before[1]):
            m.fused_attn = fused


def l1_loss(model: OFTModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    pred = model(batch["pixel_values"], batch["proprio"], batch["prompt_ids"])  # (B, T, A)
    return (pred - batch["actions"]).abs().mean()


#: outputs of the ``where`` probe: plate xy, object xy, object - gripper, gripper xy, plate - gripper (/ 0.25 m)
WHERE_DIM = 10


#: class weights of the patch probe (:func:`patch_labels`: rest, named object, named plate, other object, other
#: plate). Another object weighs as much as the named one: with it in the background class, marking every
#: object as "named" was the cheapest answer and the probe never had to read the instruction.
PATCH_CLASS_WEIGHTS = (1.0, 8.0, 2.0, 8.0, 2.0)


class AuxHeads(torch.nn.Module):
    """Training-only probes (never exported): they give the from-scratch model dense grounding signals.

    ``patch``: per visual token, the classes of :func:`patch_labels` (named object or plate, another object or
    plate, the rest; cross-entropy on the final hidden states). ``patch_mid``: the same question on the visual
    tokens leaving layer ``probe_layer``: what the final states know is read by nobody (the action
    placeholders attend to each layer's input), so the layers after ``probe_layer`` get the named object's
    patches marked as such to route on. ``where``: goal-plate position, object position, object-minus-gripper
    offset, gripper position and plate-minus-gripper offset (L1 on the mean of the action read-out states).
    Without the probes the randomly initialized network stays input-blind for thousands of steps: the 56
    placeholders start as identical zero vectors and only a learned instruction-dependent attention can route
    the named object's patches to them. The gripper terms make the read-out carry where the gripper is: without
    them the policy learned to locate the named object but ignored the proprio token for thousands of steps
    (shifting the proprio x by 13 cm moved the x action by 0.008), so it could not steer toward what it saw.
    ``attention_layer``: where :func:`attention_grounding_loss` applies (no parameters of its own).
    """

    def __init__(self, hidden: int, probe_layer: int = -1, attention_layer: int = -1) -> None:
        super().__init__()
        self.probe_layer = probe_layer
        self.attention_layer = attention_layer
        self.patch = torch.nn.Linear(hidden, len(PATCH_CLASS_WEIGHTS))
        self.patch_mid = torch.nn.Linear(hidden, len(PATCH_CLASS_WEIGHTS)) if probe_layer >= 0 else None
        self.where = torch.nn.Linear(hidden, WHERE_DIM)


#: decoder layers whose task-word attention V_local ranks by
LOCAL_LAYERS = (0, 1)


class _TrainHooks:
    """Layer hooks of the training pass: attention probabilities of chosen query rows (kept with their gradient)
    and the token drop after ``drop_layer`` (``keep``: (B, L') positions, or None).

    ``rows[layer]``: original positions of the query tokens whose attention rows layer ``layer`` keeps (sorted,
    unique; non-visual tokens, which every sample keeps alike); :meth:`attention` reads them back as (B, H, R, L').
    ``positions[i]``: the original positions of the tokens leaving layer ``i``, before any drop."""

    def __init__(self, rows: dict[int, torch.Tensor] | None = None, drop_layer: int = -1,
                 keep: torch.Tensor | None = None) -> None:
        self.rows = rows or {}
        self.drop_layer, self.keep = drop_layer, keep
        self.probs: dict[int, torch.Tensor] = {}
        self.positions: dict[int, torch.Tensor] = {}

    def score_rows(self, layer: int, position_ids: torch.Tensor) -> torch.Tensor | None:
        if layer not in self.rows:
            return None
        first = position_ids[0]  # every sample keeps as many tokens of each group: non-visual tokens sit alike
        return torch.searchsorted(first, self.rows[layer])

    def after_layer(self, layer: int, probs: torch.Tensor | None, position_ids: torch.Tensor) -> torch.Tensor | None:
        self.positions[layer] = position_ids
        if probs is not None:
            self.probs[layer] = probs
        return self.keep if layer == self.drop_layer else None

    def attention(self, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """(B, H, R, L') attention rows of the query tokens at original ``positions`` (R,) in layer ``layer``."""
        return self.probs[layer][:, :, torch.searchsorted(self.rows[layer], positions)]


def _wanted_rows(layout: SequenceLayout, n_layers: int, attention_layer: int, prefix_len: int,
                 premise: bool, sparse: bool, readout: bool = False) -> dict[int, torch.Tensor]:
    """Per layer, the query positions whose attention the training losses read (see :class:`_TrainHooks`)."""
    rows: dict[int, list[torch.Tensor]] = {}
    if readout:
        for layer in range(attention_layer + 1, n_layers):
            rows.setdefault(layer, []).append(layout.action_positions())
    if attention_layer >= 0:
        rows.setdefault(attention_layer, []).append(layout.prompt_positions())
    if premise:
        for layer in LOCAL_LAYERS:
            rows.setdefault(layer, []).append(layout.prompt_positions(prefix_len))
    if premise or sparse:
        for layer in range(len(LOCAL_LAYERS), n_layers):
            rows.setdefault(layer, []).append(layout.action_positions())
    return {layer: torch.unique(torch.cat(r)) for layer, r in rows.items()}


def token_drop_positions(rng: np.random.Generator, layout: SequenceLayout, batch: int, min_keep: int) -> torch.Tensor:
    """(B, L') positions kept by a token-drop step: all non-visual tokens and, per view, a random subset of the
    patches (one count per view for the whole batch, drawn uniformly from ``min_keep`` .. 256; the patches drawn
    per sample), in sequence order."""
    rows = []
    counts = [int(rng.integers(min_keep, PATCHES_PER_VIEW + 1)) for _ in range(layout.n_views)]
    for _ in range(batch):
        parts = [np.arange(layout.vis_start)]
        for v, n in enumerate(counts):
            start = layout.vis_start + v * PATCHES_PER_VIEW
            parts.append(start + np.sort(rng.choice(PATCHES_PER_VIEW, size=n, replace=False)))
        parts.append(np.arange(layout.vis_start + layout.n_visual, layout.length))
        rows.append(np.concatenate(parts))
    return torch.from_numpy(np.stack(rows)).long()


def labels_at(batch: dict[str, torch.Tensor], layout: SequenceLayout, positions: torch.Tensor) -> torch.Tensor:
    """Patch classes (:func:`patch_labels`) of the tokens at ``positions`` (B, L'); -1 where not a patch."""
    index = positions - layout.vis_start
    visual = (index >= 0) & (index < layout.n_visual)
    labels = batch["patch_labels"].gather(1, index.clamp(0, layout.n_visual - 1))
    return torch.where(visual, labels, torch.full_like(labels, -1))


def _grounded_pass(model: OFTModel, aux: AuxHeads | None, batch: dict[str, torch.Tensor], depth: int | None = None,
                   drop_layer: int = -1, premise: bool = False, sparse: bool = False, readout: bool = False):
    """The training forward pass up to ``depth`` layers, with the token drop of ``batch["keep"]`` (if any) after
    ``drop_layer``, keeping the attention rows the losses in use read (``aux``'s attention grounding, ``premise``:
    :func:`premise_loss`, ``sparse``: :func:`readout_entropy_loss`, ``readout``: :func:`readout_grounding_loss`):
    (final states, their positions, layout, mid-layer taps, hooks)."""
    pixels, prompt_ids = batch["pixel_values"], batch["prompt_ids"]
    layout = model.layout(pixels.shape[1] // 6, prompt_ids.shape[1] - 1)
    seq = model.assemble(model.embed_vision(pixels), batch["proprio"], prompt_ids)  # (B, L, D)
    pos = torch.arange(seq.shape[1])[None].expand(seq.shape[0], -1)  # (B, L)
    taps = {aux.probe_layer: None} if aux is not None and aux.patch_mid is not None else None
    rows = _wanted_rows(layout, model.n_layers, aux.attention_layer if aux is not None else -1,
                        int(batch["prefix_len"]), premise, sparse, readout)
    hooks = _TrainHooks(rows, drop_layer, batch.get("keep"))
    final, final_pos, _ = model.run_layers(seq, pos, hooks=hooks, taps=taps, depth=depth)  # (B, L', D)
    return final, final_pos, layout, taps, hooks


def attention_grounding_loss(probs: torch.Tensor, batch: dict[str, torch.Tensor], key_labels: torch.Tensor) -> torch.Tensor:
    """-log of the attention (head average) that the instruction's naming words put on what they name.

    ``probs`` (B, H, P, L): the prompt rows' attention at one layer over its L keys, whose patch classes
    (:func:`labels_at`, -1 for the other tokens) are ``key_labels`` (B, L). Rows are the colour and shape words
    of the object the instruction names (``batch["object_words"]``), which should attend to that object's
    patches, and the plate's colour word (``batch["plate_words"]``), which should attend to that plate's patches;
    samples where the named thing shows in no key are left out for it. Only the instruction tells which
    object and plate are meant, so the words must be read and matched with what the patches show. The
    gradient reaches the named patches' attention logits directly, not diluted over the ~595 tokens as a
    probe's is (trained through probes alone, 600 steps did not tell the named object from the others; with
    this loss the object words put 55% of their attention on it after 300 steps, chance being ~1%).
    """
    mean = probs.float().mean(dim=1)  # (B, P, L)
    losses = []
    for words, cls in (("object_words", PATCH_NAMED_OBJECT), ("plate_words", PATCH_NAMED_PLATE)):
        named = key_labels == cls  # (B, L)
        rows = batch[words] & named.any(dim=1, keepdim=True)  # (B, P)
        if rows.any():
            mass = (mean * named[:, None, :]).sum(dim=-1)  # (B, P)
            losses.append(-(mass[rows] + 1e-6).log().mean())
    return torch.stack(losses).sum() if losses else probs.sum() * 0.0


def training_losses(model: OFTModel, aux: AuxHeads | None, batch: dict[str, torch.Tensor],
                    aux_weight: float, drop_layer: int = -1, premise_weight: float = 0.0,
                    sparse_weight: float = 0.0, readout_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, action L1). Same forward pass as ``OFTModel.forward``, plus the auxiliary losses; with
    ``batch["keep"]``, the visual tokens not in it are dropped after ``drop_layer``."""
    final, final_pos, layout, taps, hooks = _grounded_pass(model, aux if aux_weight else None, batch,
                                                           drop_layer=drop_layer, premise=premise_weight > 0,
                                                           sparse=sparse_weight > 0,
                                                           readout=readout_weight > 0 and aux_weight > 0)
    readout = model.readout(final, layout)  # (B, T*A, D)
    l1 = (model.action_head(readout) - batch["actions"]).abs().mean()
    loss = l1
    if premise_weight:
        loss = loss + premise_weight * premise_loss(hooks, layout, model.n_layers, int(batch["prefix_len"]))
    if sparse_weight:
        loss = loss + sparse_weight * readout_entropy_loss(hooks, layout, model.n_layers)
    if aux is None or aux_weight == 0:
        return loss, l1
    if readout_weight:
        loss = loss + readout_weight * readout_grounding_loss(hooks, layout, model.n_layers, aux.attention_layer, batch)
    extra = patch_ce(aux.patch, final, labels_at(batch, layout, final_pos))
    extra = extra + _grounding_terms(aux, layout, taps, hooks, batch)
    extra = extra + (aux.where(readout.mean(dim=1)) - batch["where"]).abs().mean()
    return loss + aux_weight * extra, l1


def _over_positions(attention: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L') attention over the keys at original ``positions`` (B, L') -> (B, length), zero where absent."""
    return torch.zeros(attention.shape[0], length, dtype=attention.dtype).scatter(1, positions, attention)


def premise_loss(hooks: _TrainHooks, layout: SequenceLayout, n_layers: int, prefix_len: int) -> torch.Tensor:
    """KL(target || prediction) per view and V_local layer, averaged: the prediction is the task words' attention
    (head and row mean) over the view's patches at layer 0 or 1, the target the action placeholders' attention
    over them averaged over the layers after those two (detached), both renormalized over the view's patches that
    reach the last layer (a token-drop step's survivors). The task words are the prompt after its fixed
    ``prefix_len`` tokens, as the pruning takes them."""
    first = len(LOCAL_LAYERS)
    survivors = hooks.positions[n_layers - 1]  # (B, L')
    present = torch.zeros(survivors.shape[0], layout.length, dtype=torch.bool).scatter(1, survivors, True)
    view_of = layout.visual_view(torch.arange(layout.length))  # (L,)
    masks = [present & (view_of == v)[None] for v in range(layout.n_views)]  # (B, L) each

    def over(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # a distribution over the mask's keys
        kept = torch.where(mask, scores, 0.0)
        return kept / kept.sum(dim=1, keepdim=True).clamp_min(1e-12)

    action = layout.action_positions()
    with torch.no_grad():
        target = torch.stack([_over_positions(hooks.attention(layer, action).float().mean(dim=(1, 2)),
                                              hooks.positions[layer], layout.length)
                              for layer in range(first, n_layers)]).mean(dim=0)  # (B, L)
        targets = [over(target, mask) for mask in masks]
    losses = []
    for layer in LOCAL_LAYERS:
        task = hooks.attention(layer, layout.prompt_positions(prefix_len)).float().mean(dim=(1, 2))  # (B, L')
        pred = _over_positions(task, hooks.positions[layer], layout.length)
        for mask, t in zip(masks, targets):
            q = over(pred, mask)
            losses.append((t * ((t + 1e-9).log() - (q + 1e-9).log())).sum(dim=1).mean())  # KL, mean over B
    return torch.stack(losses).mean()


def readout_entropy_loss(hooks: _TrainHooks, layout: SequenceLayout, n_layers: int) -> torch.Tensor:
    """Mean normalized entropy (0: one key, 1: uniform) of every head's attention row of the action placeholders
    in the layers after the V_local layers."""
    action = layout.action_positions()
    out = []
    for layer in range(len(LOCAL_LAYERS), n_layers):
        p = hooks.attention(layer, action).float()  # (B, H, 56, L')
        out.append(-(p * p.clamp_min(1e-12).log()).sum(dim=-1).mean() / math.log(p.shape[-1]))
    return torch.stack(out).mean()


def readout_grounding_loss(hooks: _TrainHooks, layout: SequenceLayout, n_layers: int, attention_layer: int,
                           batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """-log of the attention (head and placeholder average) that the action read-out puts on the named object's
    and the named plate's patches, in each layer after ``attention_layer``, averaged over those layers; samples
    where neither shows in any key of a layer are left out of it. The actions are a function of where the named
    object (before the grasp) or plate (after it) is: the routing to them is given, not searched for."""
    action = layout.action_positions()
    losses = []
    for layer in range(attention_layer + 1, n_layers):
        mean = hooks.attention(layer, action).float().mean(dim=(1, 2))  # (B, L')
        labels = labels_at(batch, layout, hooks.positions[layer])  # (B, L')
        named = (labels == PATCH_NAMED_OBJECT) | (labels == PATCH_NAMED_PLATE)
        rows = named.any(dim=1)
        if rows.any():
            mass = (mean * named).sum(dim=1)  # (B,)
            losses.append(-(mass[rows] + 1e-6).log().mean())
    return torch.stack(losses).mean() if losses else torch.zeros(())


def _grounding_terms(aux: AuxHeads, layout: SequenceLayout, taps: dict | None, hooks: _TrainHooks,
                     batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mid-layer patch probe's cross-entropy and the attention grounding, for those of them in use."""
    loss = torch.zeros(())
    if taps is not None:
        labels = labels_at(batch, layout, hooks.positions[aux.probe_layer])
        loss = loss + patch_ce(aux.patch_mid, taps[aux.probe_layer], labels)
    if aux.attention_layer >= 0 and aux.attention_layer in hooks.probs:
        probs = hooks.attention(aux.attention_layer, layout.prompt_positions())
        loss = loss + attention_grounding_loss(probs, batch, labels_at(batch, layout, hooks.positions[aux.attention_layer]))
    return loss


def patch_ce(head: torch.nn.Linear, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy of the patch probe ``head`` on token states (B, L, D) with patch classes (B, L)
    (-1: not a patch, left out)."""
    logits = head(states).reshape(-1, len(PATCH_CLASS_WEIGHTS)).float()  # (B*L, classes)
    return torch.nn.functional.cross_entropy(logits, labels.reshape(-1), weight=torch.tensor(PATCH_CLASS_WEIGHTS),
                                             ignore_index=-1)


def grounding_loss(model: OFTModel, aux: AuxHeads, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The grounding warm-up's loss: the patch probe at ``aux.probe_layer`` and the attention grounding at
    ``aux.attention_layer``, with only the layers up to them run (no action head)."""
    depth = max(aux.probe_layer, aux.attention_layer) + 1
    _, _, layout, taps, hooks = _grounded_pass(model, aux, batch, depth=depth)
    return _grounding_terms(aux, layout, taps, hooks, batch)


#: patch classes of :func:`patch_labels`
PATCH_OTHER, PATCH_NAMED_OBJECT, PATCH_NAMED_PLATE, PATCH_OTHER_OBJECT, PATCH_OTHER_PLATE = range(5)


def patch_labels(task: TabletopTask, view: str, preprocess: PreprocessConfig) -> np.ndarray:
    """(256,) labels of the 16x16 patches of the policy-ready frame.

    0 table and the rest, 1 named object, 2 named plate, 3 another object, 4 the other plate. A patch
    showing several things takes the named object over another object over a plate. The object and plate
    the instruction names differ from the others only by their name, so telling 1 from 3 and 2 from 4
    needs the instruction.
    """
    size = task.config.image_size
    grid = np.zeros((16, 16), np.uint8)
    side = math.sqrt(preprocess.crop_scale) if preprocess.center_crop else 1.0
    lo = (1 - side) / 2
    shapes = task.outlines(view)
    sc = task.scene
    order = [(PATCH_NAMED_PLATE if k == sc.goal_plate else PATCH_OTHER_PLATE, pix) for k, pix in enumerate(shapes["plates"])]
    order.sort(key=lambda item: item[0] == PATCH_NAMED_PLATE)
    order += [(PATCH_OTHER_OBJECT, pix) for k, pix in enumerate(shapes["objects"]) if k != sc.target]
    order.append((PATCH_NAMED_OBJECT, shapes["objects"][sc.target]))
    for value, pix in order:  # later entries win
        crop = (pix - lo * (size - 1)) * (224 - 1) / (side * (size - 1))  # pixels of the policy frame
        cells = crop / 14.0 - 0.5  # patch-grid coordinates (cell centres on integers)
        cv2.fillPoly(grid, [np.round(cells * 16).astype(np.int32)], value, shift=4)
        c = np.floor(crop.mean(axis=0) / 14.0).astype(int)
        if 0 <= c[0] < 16 and 0 <= c[1] < 16:
            grid[c[1], c[0]] = value
    return grid.reshape(-1).astype(np.int64)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of global step ``step``: the grounding warm-up (linear warm-up, then constant), then the
    action training (linear warm-up, cosine decay to 10% over ``cfg.steps``)."""
    if step < cfg.ground_steps:
        return cfg.lr * min(1.0, (step + 1) / max(1, min(100, cfg.ground_steps // 10)))
    step -= cfg.ground_steps
    warm = max(1, min(100, cfg.steps // 10))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


#: fields that may change when a run is resumed (the schedule follows the new ``steps``)
RESUMABLE_CHANGES = ("steps", "max_minutes", "save_every_min", "threads", "out_dir")


def _identity(cfg: TrainConfig) -> str:
    """The part of the configuration a resumed run must share with the saved state."""
    return json.dumps({k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}, sort_keys=True)


@dataclass
class TrainResult:
    out_dir: Path
    steps_done: int
    train_loss: float | None  # None: no action step ran
    val_loss: float | None
    minutes: float


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (oneDNN's own check: AVX512 or Arm BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def train(cfg: TrainConfig, progress: bool = True, log=print) -> TrainResult:
    """Run (or resume) training and write the checkpoint; returns the final losses."""
    torch.set_num_threads(cfg.threads)
    bf16 = cfg.bf16 and native_bf16()
    if cfg.bf16 and not bf16:
        log("this CPU has no native bfloat16 matrix products: training in float32 (bfloat16 autocast would be ~8x slower)")
    out = Path(cfg.out_dir)
    work = out / WORK_DIR
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not work.is_dir():
        raise ValueError(f"out_dir={out} is a non-empty directory that no training run made (no {WORK_DIR}/); "
                         "choose a new or empty directory")
    init = inspect_checkpoint(cfg.init_from) if cfg.init_from else None  # fails early on a bad directory
    if init is not None:
        init.resolve_unnorm_key(UNNORM_KEY)  # a test-bed checkpoint, with sane statistics
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    state_file = work / STATE_FILE

    episodes = generate(cfg.episodes + cfg.val_episodes, seed=cfg.data_seed, noise=cfg.noise, progress=progress,
                        excursion_rate=cfg.excursion_rate, fine_excursion_rate=cfg.fine_excursion_rate,
                        late_release=cfg.late_release)
    val_eps, train_eps = episodes[: cfg.val_episodes], episodes[cfg.val_episodes:]
    data_stats = dataset_statistics(train_eps)
    stats = {UNNORM_KEY: init.stats[init.resolve_unnorm_key(UNNORM_KEY)] if init is not None else data_stats}
    tok_files = make_tiny_tokenizer_files(task_words(), vocab_size=VOCAB)
    tok_dir = work / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    for name, text in tok_files.items():
        (tok_dir / name).write_text(text)
    tokenizer = PromptTokenizer(tok_dir / "tokenizer.json")
    batcher = Batcher(train_eps, stats[UNNORM_KEY], tokenizer, relabel=cfg.relabel)
    # the warm-up names each object of a scene equally often (the demonstration's own object 1 time in n), also
    # while one is held: otherwise "the object in the gripper" would be a way to the answer without the name
    n_obj = 1 + TaskConfig().n_distractors
    ground_batcher = Batcher(train_eps, stats[UNNORM_KEY], tokenizer, relabel=(n_obj - 1) / n_obj, relabel_held=True)
    val_batches = []
    if val_eps:
        vb = Batcher(val_eps, stats[UNNORM_KEY], tokenizer)
        val_batches = [vb.sample(np.random.default_rng([cfg.seed, 10**9 + k]), cfg.batch_size) for k in range(4)]

    model, config = build_model(cfg)
    if init is not None:
        try:
            model.load_state_dict(load_model(init).state_dict())
        except RuntimeError as err:
            raise ValueError(f"--init-from={cfg.init_from} does not have this run's architecture (vit_*, llm_* "
                             f"flags): {str(err).splitlines()[1] if len(str(err).splitlines()) > 1 else err}") from None
    aux = AuxHeads(cfg.llm_hidden, cfg.probe_layer, cfg.attention_layer) if cfg.aux_weight > 0 else None
    params = list(model.parameters()) + (list(aux.parameters()) if aux is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    start, elapsed_before, losses, ground_losses = 0, 0.0, [], []
    if state_file.exists():
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
            saved = {k: v for k, v in json.loads(state["train_config"]).items() if k not in RESUMABLE_CHANGES}
        except Exception as err:  # noqa: BLE001 - truncated, not a torch file, or another file's content
            raise ValueError(f"{state_file} is unreadable ({type(err).__name__}); remove it to start over") from None
        if json.dumps(saved, sort_keys=True) != _identity(cfg):
            now = json.loads(_identity(cfg))
            diff = [f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(saved) | set(now))
                    if saved.get(k) != now.get(k)]
            raise ValueError(f"{state_file} was written by a different configuration ({'; '.join(diff)}); remove it or "
                             f"use the same flags (only {', '.join(RESUMABLE_CHANGES)} may change)")
        model.load_state_dict(state["model"])
        if aux is not None:
            aux.load_state_dict(state["aux"])
        opt.load_state_dict(state["optimizer"])
        start, elapsed_before, losses = int(state["step"]), float(state["elapsed_s"]), list(state["losses"])
        ground_losses = list(state["ground_losses"])
        log(f"resuming from {state_file} at step {start}")

    def save_state(step: int, elapsed: float) -> None:
        tmp = state_file.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "aux": aux.state_dict() if aux is not None else {},
                    "optimizer": opt.state_dict(), "step": step, "elapsed_s": elapsed,
                    "losses": losses, "ground_losses": ground_losses, "train_config": _identity(cfg)}, tmp)
        tmp.replace(state_file)

    model.train()
    t_start = time.perf_counter()
    last_save = t_start
    step = start
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.ground_steps + cfg.steps, initial=start, desc="train", unit="step")
    try:
        while step < cfg.ground_steps + cfg.steps:
            elapsed = elapsed_before + time.perf_counter() - t_start
            if cfg.max_minutes and elapsed > 60 * cfg.max_minutes:
                log(f"time limit of {cfg.max_minutes} min reached at step {step}")
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            grounding = step < cfg.ground_steps
            rng = np.random.default_rng([cfg.seed, step])
            batch = (ground_batcher if grounding else batcher).sample(rng, cfg.batch_size)
            if not grounding and cfg.token_drop and rng.random() < cfg.token_drop:
                layout = model.layout(batch["pixel_values"].shape[1] // 6, batch["prompt_ids"].shape[1] - 1)
                batch["keep"] = token_drop_positions(rng, layout, cfg.batch_size, cfg.token_drop_min)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), training_attention(model, written_out=bf16):
                if grounding:
                    loss = grounding_loss(model, aux, batch)
                else:
                    loss, l1 = training_losses(model, aux, batch, cfg.aux_weight, drop_layer=cfg.token_drop_layer,
                                               premise_weight=cfg.premise_weight, sparse_weight=cfg.sparse_weight,
                                               readout_weight=cfg.readout_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if grounding:
                ground_losses.append(loss.item())
            else:
                losses.append(l1.item())
            step += 1
            if bar is not None:
                bar.update(1)
                shown = {"ground_ce": f"{np.mean(ground_losses[-50:]):.4f}"} if grounding else {"l1": f"{np.mean(losses[-50:]):.4f}"}
                bar.set_postfix(**shown, lr=f"{lr_at(step, cfg):.1e}")
            if time.perf_counter() - last_save > 60 * cfg.save_every_min:
                save_state(step, elapsed_before + time.perf_counter() - t_start)
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        log(f"interrupted at step {step}: saving a resumable state")
        save_state(step, elapsed_before + time.perf_counter() - t_start)
        raise
    finally:
        if bar is not None:
            bar.close()
    minutes = (elapsed_before + time.perf_counter() - t_start) / 60
    save_state(step, minutes * 60)

    model.eval()
    val_loss = None
    if val_batches:
        with torch.no_grad():
            val_loss = float(np.mean([float(l1_loss(model, b)) for b in val_batches]))
    train_loss = float(np.mean(losses[-50:])) if losses else None  # no action step ran (time limit, warm-up)
    write_checkpoint(out, model, config, stats, tok_files, step=step, shards=1,
                     dtype=torch.float16 if cfg.fp16 else None)
    for stale in out.glob("*--*_checkpoint.pt"):
        if not stale.name.endswith(f"--{step}_checkpoint.pt"):
            stale.unlink()
    summary = {"train_config": asdict(cfg), "steps_done": step, "train_l1_last50": train_loss, "val_l1": val_loss,
               "minutes": minutes, "bf16_autocast": bf16, "train_transitions": data_stats["num_transitions"],
               "loss_curve_every_50": [float(np.mean(losses[i:i + 50])) for i in range(0, len(losses), 50)],
               "ground_ce_every_50": [float(np.mean(ground_losses[i:i + 50])) for i in range(0, len(ground_losses), 50)]}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    return TrainResult(out, step, train_loss, val_loss, minutes)


def attribute_help(doc: str) -> dict[str, str]:
    """Per attribute, the first sentence of its entry in a Google-style ``Attributes:`` section (``name: text`` or
    ``a, b, c: text`` for several, continued on more deeply indented lines), for ``--help``."""
    entries: dict[str, str] = {}
    names: list[str] = []
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    indent = None
    for line in section.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        head, sep, text = line.strip().partition(": ")
        if depth == indent and sep and all(n.strip().isidentifier() for n in head.split(",")):
            names = [n.strip() for n in head.split(",")]
            for n in names:
                entries[n] = text
        else:
            for n in names:
                entries[n] += " " + line.strip()
    first = {}
    for name, text in entries.items():
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")  # reST roles and literals
        end = re.search(r"(?<!e\.g)(?<!i\.e)\.\s", text)
        first[name] = text if end is None else text[: end.start() + 1]
    return first


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="specprune-train",
        description="Train a small OpenVLA-OFT-architecture policy on the test-bed task (CPU: about 30-40 min with "
        "the defaults on 2 cores with AVX512, ~4x longer with AVX2 only) and write it in the released checkpoint "
        f"layout. Re-running with the same flags resumes from <out-dir>/{WORK_DIR}/{STATE_FILE}.",
    )
    defaults = TrainConfig()
    helps = attribute_help(TrainConfig.__doc__ or "")
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        text = f"{helps.get(name, '')} (default {value})".lstrip().replace("%", "%%")
        if isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=text)
        else:
            p.add_argument(flag, type=type(value), default=value, help=text)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kw = {k: v for k, v in vars(args).items() if k not in ("no_progress", "json")}
    try:
        cfg = TrainConfig(**kw)
        res = train(cfg, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    except (ValueError, OSError, RuntimeError) as err:  # RuntimeError: the expert failed on the demonstrations' seeds
        print(f"specprune-train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    summary = {"out_dir": str(res.out_dir), "steps": res.steps_done, "train_l1": res.train_loss,
               "val_l1": res.val_loss, "minutes": round(res.minutes, 2)}
    l1 = lambda v: "-" if v is None else round(v, 4)  # noqa: E731 - no action step ran, no validation set
    print(json.dumps(summary) if args.json else
          f"wrote {res.out_dir} after {res.steps_done} steps ({res.minutes:.1f} min): train L1 {l1(res.train_loss)}, "
          f"val L1 {l1(res.val_loss)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
