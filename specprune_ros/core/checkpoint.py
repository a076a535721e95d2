"""Strict, offline loading (and writing) of checkpoints in the released OpenVLA-OFT layout.

A checkpoint directory holds ``config.json``, ``model.safetensors`` or ``model-*-of-*.safetensors`` +
``model.safetensors.index.json``, ``dataset_statistics.json``, ``action_head--<step>_checkpoint.pt``,
``proprio_projector--<step>_checkpoint.pt`` (optional) and ``tokenizer.json``. Every failure names the
file or keys and, for names, the closest valid one.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import closest
from .model import ModelSpec, OFTModel

DEFAULT_CHUNK_LEN = 8  # OFT's LIBERO constant; a config.json may override it with "num_actions_chunk"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
HEAD_GLOB = "action_head--*_checkpoint.pt"
PROPRIO_GLOB = "proprio_projector--*_checkpoint.pt"
_LAYERSCALE = re.compile(r"\.(ls[12])\.scale_factor$")


class CheckpointError(ValueError):
    """The checkpoint directory is incomplete or does not match the architecture it declares."""


@dataclass
class Checkpoint:
    """A checkpoint directory, inspected but not yet loaded into a model."""

    path: Path
    config: dict
    spec: ModelSpec
    stats: dict
    weight_files: list[Path]
    action_head_file: Path
    proprio_file: Path | None
    tokenizer_file: Path
    action_head_state: dict
    proprio_state: dict | None

    def resolve_unnorm_key(self, key: str | None) -> str:
        """The statistics key to use; None picks the only one. Unknown keys name the closest valid one."""
        keys = sorted(self.stats)
        if key is None or key == "":
            if len(keys) == 1:
                return self.resolve_unnorm_key(keys[0])
            raise CheckpointError(f"{self.path}: several unnorm keys {keys}; choose one with unnorm_key")
        if key not in self.stats:
            raise CheckpointError(f"unknown unnorm_key {key!r}{closest(key, keys)}; this checkpoint has {keys}")
        check_statistics(f"{self.path / 'dataset_statistics.json'}: {key}", self.stats[key],
                         self.spec.action_normalization, self.spec.action_dim, self.spec.proprio_dim)
        return key


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file: {path}")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def _one(path: Path, pattern: str, required: bool) -> Path | None:
    found = sorted(path.glob(pattern))
    if not found:
        if required:
            raise CheckpointError(f"missing checkpoint file: {path / pattern}")
        return None
    if len(found) > 1:
        raise CheckpointError(f"{path}: several files match {pattern}: {[f.name for f in found]}; keep one")
    return found[0]


def _load_pt(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    bad = [repr(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
           or not v.is_floating_point()]
    if bad:
        raise CheckpointError(f"{path}: entries that are not floating-point tensors under string keys: {bad[:5]}")
    # Saved from DDP-wrapped modules: every key starts with "module.".
    out = {k.removeprefix("module."): v for k, v in state.items()}
    if len(out) != len(state):
        raise CheckpointError(f"{path}: a key appears both with and without the 'module.' prefix")
    return out


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_FILE
    if index.exists() and (path / SINGLE_FILE).exists():
        raise CheckpointError(f"{path}: both {SINGLE_FILE} and {INDEX_FILE} exist; loaders disagree on which wins, "
                              "keep one")
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = sorted({path / name for name in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard(s) that are missing: {missing}")
        return files
    single = path / SINGLE_FILE
    if single.is_file():
        return [single]
    raise CheckpointError(f"missing checkpoint weights: neither {index} nor {single} exists")


#: statistics keys of the low/high bounds per normalization type
BOUNDS = {"bounds_q99": ("q01", "q99"), "bounds": ("min", "max")}


def _numbers(where: str, value: Any, length: int, kind: type = float) -> list:
    """``value`` as a list of ``length`` finite numbers (``kind=bool``: booleans); CheckpointError otherwise."""
    ok = isinstance(value, list) and len(value) == length and all(
        isinstance(v, bool) if kind is bool else (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   and math.isfinite(v)) for v in value)  # fmt: skip
    if not ok:
        what = "true/false values" if kind is bool else "finite numbers"
        raise CheckpointError(f"{where} must be a list of {length} {what}, got {str(value)[:120]}")
    return value


def _stats(path: Path, config: dict) -> dict:
    """dataset_statistics.json overrides config.norm_stats (which holds the base model's keys)."""
    stats_file = path / "dataset_statistics.json"
    base = config.get("norm_stats") or {}
    if not isinstance(base, dict):
        raise CheckpointError(f"{path / 'config.json'}: norm_stats must be an object")
    stats = dict(base)
    stats.update(_read_json(stats_file))
    for key, entry in stats.items():
        if not isinstance(entry, dict) or "action" not in entry:
            raise CheckpointError(f"{stats_file}: entry {key!r} has no 'action' statistics")
    return stats


def check_statistics(where: str, entry: dict, norm: str, action_dim: int, proprio_dim: int | None) -> None:
    """The action (and proprio) bounds of one statistics entry: finite numbers of the model's widths, low <= high,
    an optional boolean mask of the same width. CheckpointError naming ``where`` and the field otherwise."""
    lo_key, hi_key = BOUNDS[norm]
    for part, width in (("action", action_dim), ("proprio", proprio_dim)):
        block = entry.get(part)
        if width is None or (block is None and part == "proprio"):
            continue
        field = f"{where}.{part}"
        if not isinstance(block, dict) or lo_key not in block or hi_key not in block:
            raise CheckpointError(f"{field} lacks {lo_key!r}/{hi_key!r} (action_normalization {norm!r})")
        lo = _numbers(f"{field}.{lo_key}", block[lo_key], width)
        hi = _numbers(f"{field}.{hi_key}", block[hi_key], width)
        inverted = [i for i, (a, b) in enumerate(zip(lo, hi)) if a > b]
        if inverted:
            raise CheckpointError(f"{field}: {lo_key} exceeds {hi_key} in dimension(s) {inverted}")
        if "mask" in block:
            _numbers(f"{field}.mask", block["mask"], width, kind=bool)


def inspect_checkpoint(path: str | Path) -> Checkpoint:
    """Check the directory's files and read everything but the main weights."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    config = _read_json(path / "config.json")
    for key in ("timm_model_ids", "text_config"):
        if key not in config:
            raise CheckpointError(f"{path / 'config.json'} lacks {key!r}; is this an OpenVLA(-OFT) checkpoint?")
    if not isinstance(config["text_config"], dict) or not isinstance(config["timm_model_ids"], list):
        raise CheckpointError(f"{path / 'config.json'}: text_config must be an object and timm_model_ids a list")
    weight_files = _weight_files(path)
    head_file = _one(path, HEAD_GLOB, required=True)
    proprio_file = _one(path, PROPRIO_GLOB, required=False)
    if proprio_file is not None and _step(head_file) != _step(proprio_file):
        raise CheckpointError(f"{path}: {head_file.name} and {proprio_file.name} come from different training steps")
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(f"missing checkpoint file: {tokenizer_file}")
    head_state = _load_pt(head_file)
    proprio_state = _load_pt(proprio_file) if proprio_file else None

    text = config["text_config"]
    hidden = _positive_int(text, "hidden_size", 4096)
    for key in ("num_hidden_layers", "num_attention_heads", "vocab_size"):
        _positive_int(text, key, 1)
    try:
        out_w = head_state["model.fc2.weight"]  # (A, D)
    except KeyError:
        raise CheckpointError(f"{head_file} lacks 'module.model.fc2.weight'; is it an L1 regression head?") from None
    if out_w.ndim != 2:
        raise CheckpointError(f"{head_file}: model.fc2.weight has shape {tuple(out_w.shape)}, not (actions, width)")
    action_dim = int(out_w.shape[0])
    proprio_dim = None
    if proprio_state is not None:
        if "fc1.weight" not in proprio_state:
            raise CheckpointError(f"{proprio_file} lacks 'module.fc1.weight'")
        if proprio_state["fc1.weight"].ndim != 2:
            raise CheckpointError(f"{proprio_file}: fc1.weight has shape {tuple(proprio_state['fc1.weight'].shape)}")
        proprio_dim = int(proprio_state["fc1.weight"].shape[1])
    overrides = config.get("timm_overrides") or []
    if not isinstance(overrides, list) or not all(o is None or isinstance(o, dict) for o in overrides):
        raise CheckpointError(f"{path / 'config.json'}: timm_overrides must be a list of objects")
    ids = tuple(config["timm_model_ids"])
    if overrides and len(overrides) != len(ids):
        raise CheckpointError(f"config.json: timm_overrides has {len(overrides)} entries for {len(ids)} timm_model_ids")
    if action_dim != 7 and "num_actions_chunk" not in config:
        raise CheckpointError(
            f"{head_file}: the head predicts {action_dim}-D actions, but config.json does not say how many steps a "
            f"chunk has. OFT derives it from the robot platform (LIBERO: 8 x 7 with q01/q99 bounds; ALOHA: 25 x 14 "
            f"with min/max bounds); add \"num_actions_chunk\" and \"action_normalization\" to config.json"
        )
    action_norm = config.get("action_normalization", "bounds_q99")
    if action_norm not in ("bounds_q99", "bounds"):
        raise CheckpointError(f"config.json: action_normalization={action_norm!r} must be 'bounds_q99' or 'bounds'")
    spec = ModelSpec(
        timm_model_ids=ids,
        timm_overrides=tuple(dict(o or {}) for o in overrides),
        image_size=int((config.get("image_sizes") or [224])[0]),
        text_config={k: v for k, v in text.items() if k not in ("architectures", "model_type", "torch_dtype", "dtype")},
        proprio_dim=proprio_dim,
        action_dim=action_dim,
        chunk_len=_positive_int(config, "num_actions_chunk", DEFAULT_CHUNK_LEN),
        use_fused_vision_backbone=_flag(config, "use_fused_vision_backbone", True),
        action_normalization=action_norm,
        raw_config=config,
    )
    if hidden != int(out_w.shape[1]):
        raise CheckpointError(f"{head_file}: fc2 expects width {out_w.shape[1]}, the LLM has hidden_size {hidden}")
    stats = _stats(path, config)
    return Checkpoint(
        path, config, spec, stats, weight_files, head_file, proprio_file, tokenizer_file, head_state, proprio_state
    )


def _positive_int(section: dict, key: str, default: int) -> int:
    """``section[key]`` (a config.json object) as a positive integer, ``default`` when absent."""
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"config.json: {key}={value!r} must be a positive integer")
    return value


def _flag(config: dict, key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise CheckpointError(f"config.json: {key}={value!r} must be true or false")
    return value


def _step(path: Path) -> str:
    """The training step in ``<name>--<step>_checkpoint.pt``."""
    return path.name.partition("--")[2].removesuffix("_checkpoint.pt")


def to_model_key(key: str) -> str:
    """Checkpoint key -> module key (the checkpoint stores timm LayerScale as scale_factor, timm as gamma)."""
    return _LAYERSCALE.sub(r".\1.gamma", key)


def to_checkpoint_key(key: str) -> str:
    return re.sub(r"\.(ls[12])\.gamma$", r".\1.scale_factor", key)


def _check_keys(where: str, provided: dict, expected: dict) -> None:
    missing = sorted(set(expected) - set(provided))
    unexpected = sorted(set(provided) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing weight(s), e.g. {missing[:5]}")
    if unexpected:
        hints = [f"{k!r}{closest(k, expected)}" for k in unexpected[:5]]
        problems.append(f"{len(unexpected)} unexpected weight(s), e.g. {', '.join(hints)}")
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))
    bad = [
        f"{k}: checkpoint {tuple(provided[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(expected)
        if tuple(provided[k].shape) != tuple(expected[k].shape)
    ]
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} shape mismatch(es): " + "; ".join(bad[:5]))


def load_model(ckpt: Checkpoint, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> OFTModel:
    """Build the network on the meta device and fill it strictly from the checkpoint files."""
    try:
        with torch.device("meta"):
            model = OFTModel(ckpt.spec)
    except Exception as err:  # noqa: BLE001 - transformers/timm reject the configuration in their own ways
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        raise CheckpointError(f"{ckpt.path / 'config.json'}: cannot build the model it describes: {detail}") from None
    expected = model.state_dict()

    main: dict[str, torch.Tensor] = {}
    for f in ckpt.weight_files:
        try:
            with safe_open(str(f), framework="pt", device="cpu") as sf:
                for key in sf.keys():
                    name = to_model_key(key)
                    if name in main:
                        raise CheckpointError(f"{f}: weight {key!r} is stored twice (another shard, or both the "
                                              "LayerScale 'gamma' and 'scale_factor' names)")
                    main[name] = sf.get_tensor(key)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - truncated / corrupt shard
            raise CheckpointError(f"cannot read {f}: {err}") from None
    core_expected = {k: v for k, v in expected.items() if not k.startswith(("action_head.", "proprio_projector."))}
    _check_keys(f"{ckpt.path} (safetensors)", main, core_expected)
    _check_keys(str(ckpt.action_head_file), ckpt.action_head_state, model.action_head.state_dict())
    state = dict(main)
    state.update({f"action_head.{k}": v for k, v in ckpt.action_head_state.items()})
    if model.proprio_projector is not None:
        _check_keys(str(ckpt.proprio_file), ckpt.proprio_state, model.proprio_projector.state_dict())
        state.update({f"proprio_projector.{k}": v for k, v in ckpt.proprio_state.items()})
    state = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    rebuild_buffers(model, device)
    return model.eval().requires_grad_(False)


def rebuild_buffers(model: OFTModel, device) -> None:
    """Non-persistent buffers (RoPE inverse frequencies) are not in checkpoints: recompute them in fp32."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    llm = model.language_model.model
    llm.rotary_emb = LlamaRotaryEmbedding(config=llm.config).to(device)
    left = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors left uninitialized after loading: {left[:5]}")


# ----------------------------------------------------------------------------------------------------------
def write_checkpoint(
    out_dir: str | Path,
    model: OFTModel,
    config: dict,
    stats: dict,
    tokenizer_files: dict[str, str],
    step: int = 150000,
    shards: int = 2,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` in the released layout (used for tiny test checkpoints and trained test-bed models)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to("cpu").contiguous()
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    state = model.state_dict()
    main = {
        to_checkpoint_key(k): cast(v)
        for k, v in state.items()
        if not k.startswith(("action_head.", "proprio_projector."))
    }
    keys = sorted(main)
    if shards > 1:
        groups = [keys[i::shards] for i in range(shards)]
        weight_map = {}
        for i, group in enumerate(groups, start=1):
            name = f"model-{i:05d}-of-{shards:05d}.safetensors"
            save_file({k: main[k] for k in group}, str(out / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in group})
        (out / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    else:
        save_file(main, str(out / SINGLE_FILE), metadata={"format": "pt"})
    torch.save({f"module.{k}": cast(v) for k, v in model.action_head.state_dict().items()}, out / f"action_head--{step}_checkpoint.pt")
    if model.proprio_projector is not None:
        torch.save(
            {f"module.{k}": cast(v) for k, v in model.proprio_projector.state_dict().items()},
            out / f"proprio_projector--{step}_checkpoint.pt",
        )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "dataset_statistics.json").write_text(json.dumps(stats, indent=2))
    for name, text in tokenizer_files.items():
        (out / name).write_text(text)
    return out
