"""Typed, frozen, validated configuration of the policy.

These dataclasses are the single source of truth: ROS parameters and CLI flags are derived from them
(:func:`fields_doc`), never declared a second time.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed."""


def non_finite(value: Any) -> bool:
    """True when ``value``, or an item of a list or tuple ``value``, is a float NaN or inf."""
    values = value if isinstance(value, (list, tuple)) else (value,)
    return any(isinstance(v, float) and not math.isfinite(v) for v in values)


def device_problem(device: str) -> str | None:
    """Why torch cannot use ``device`` on this machine (no CUDA, no such GPU index, no MPS), or None."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"device={device!r}: no CUDA device is available here (torch.cuda.is_available() is False); use cpu"
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            n = torch.cuda.device_count()
            return f"device={device!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return "device='mps': Apple's Metal backend is not available here; use cpu"
    return None


def closest(name: str, candidates) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _doc(text: str, **kw) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw camera frames become the 224x224 policy input (see docs/architecture.md)."""

    image_size: int = _doc("side of the square policy input, fixed by the vision towers", default=224)
    flip: bool = _doc("rotate frames 180 degrees first (LIBERO renders upside down)", default=False)
    center_crop: bool = _doc(
        "take a center crop of `crop_scale` of the area and resize back (checkpoints trained with "
        "random-crop augmentation, e.g. the released LIBERO ones, need it)",
        default=True,
    )
    crop_scale: float = _doc("area fraction kept by the center crop", default=0.9)
    jpeg_roundtrip: bool = _doc(
        "JPEG-encode and decode (quality 95) frames that need resizing, as the LIBERO training data was stored",
        default=False,
    )

    def __post_init__(self) -> None:
        if self.image_size != 224:
            raise ConfigError(f"image_size={self.image_size}: the released vision towers take 224 only")
        if not 0.1 <= self.crop_scale <= 1.0:
            raise ConfigError(f"crop_scale={self.crop_scale} must lie in [0.1, 1.0]")


def _typed(name: str, value: Any, type_name: str) -> Any:
    """``value`` as the field type ``type_name`` names, or ConfigError saying what was given."""
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{name}={value!r} must be {expected}, got {type(value).__name__}")

    if type_name == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false (a boolean, not text)")
        return value
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if type_name.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of names")
        return tuple(value)
    if type_name == "str | None":
        if value is not None and not isinstance(value, str):
            raise wrong("text or null")
        return value
    if not isinstance(value, str):
        raise wrong("text")
    return value


@dataclass(frozen=True)
class PolicyConfig:
    """Everything needed to build an OpenVLA-OFT policy from a local checkpoint directory."""

    checkpoint: str = _doc("directory of an OpenVLA-OFT checkpoint in the released layout", default="")
    unnorm_key: str | None = _doc(
        "dataset_statistics.json key used to (un)normalize actions and proprio; empty = the only key",
        default=None,
    )
    device: str = _doc("torch device: cpu, cuda, cuda:1, ...", default="cpu")
    dtype: str = _doc("weights and activations: float32 (CPU) or bfloat16 (CUDA)", default="float32")
    preset: str = _doc("pruning preset: off, conservative, paper, aggressive, static-only, fine-focus (docs/method.md)", default="paper")
    proportional: bool = _doc("with a pruning preset: each dropped visual token's attention weight goes to the nearest "
                              "kept token of its view (not in the paper; docs/method.md)", default=False)
    merge: bool = _doc("with proportional: each kept token's hidden state also becomes the weighted mean of those it "
                       "stands for (not in the paper; docs/method.md)", default=False)
    views: tuple[str, ...] = _doc("camera view names in checkpoint image order", default=("primary", "wrist"))
    flip: bool = _doc("rotate camera frames 180 degrees (LIBERO)", default=False)
    center_crop: bool = _doc("center crop of crop_scale area, then resize back to 224", default=True)
    crop_scale: float = _doc("area fraction of the center crop", default=0.9)
    jpeg_roundtrip: bool = _doc("JPEG round trip of frames that need resizing (LIBERO training data)", default=False)
    libero_gripper: bool = _doc("map gripper output g -> -sign(2g-1) (LIBERO: +1 closes, -1 opens)", default=False)
    control_dt: float = _doc("seconds between action rows (LIBERO: 0.05 = 20 Hz)", default=0.05)
    seed: int = _doc("seed of any randomness (none at inference; kept for reproducible tooling)", default=0)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} is not one of {DTYPES}{closest(self.dtype, DTYPES)}")
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise ConfigError(f"device={self.device!r}: use cpu, cuda or cuda:N")
        if self.device == "cpu" and self.dtype == "float16":
            raise ConfigError("dtype=float16 is not supported on the CPU; use float32 (or bfloat16)")
        if not self.views or len(set(self.views)) != len(self.views):
            raise ConfigError(f"views={self.views!r} must be a non-empty list of distinct names")
        if not 1e-3 <= self.control_dt <= 10:
            raise ConfigError(f"control_dt={self.control_dt} must lie in [0.001, 10] seconds (LIBERO: 0.05)")
        from .presets import PRESETS  # late import: presets import config classes

        if self.preset not in PRESETS:
            raise ConfigError(f"preset={self.preset!r} is unknown; known: {sorted(PRESETS)}{closest(self.preset, PRESETS)}")
        if self.merge and not self.proportional:
            raise ConfigError("merge=true needs proportional=true (docs/method.md, section 6)")
        self.preprocess  # validates crop_scale

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(
            flip=self.flip, center_crop=self.center_crop, crop_scale=self.crop_scale, jpeg_roundtrip=self.jpeg_roundtrip
        )

    @classmethod
    def fields_doc(cls) -> dict[str, tuple[str, Any, str]]:
        """``{name: (type name, default, description)}`` for deriving ROS parameters and CLI flags."""
        out = {}
        for f in dataclasses.fields(cls):
            out[f.name] = (str(f.type), f.default, f.metadata.get("doc", ""))
        return out

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "PolicyConfig":
        """Build from a flat mapping (YAML, ROS parameters); unknown keys are an error naming the closest, and each
        value must have its field's type (a YAML ``'false'`` string, or a bare view name for ``views``, is an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in names]
        if unknown:
            hints = ", ".join(f"{k!r}{closest(k, names)}" for k in unknown)
            raise ConfigError(f"unknown policy config key(s): {hints}")
        kw = dict(values)
        if kw.get("unnorm_key") == "":
            kw["unnorm_key"] = None
        types = {name: type_name for name, (type_name, _, _) in cls.fields_doc().items()}
        for name, value in kw.items():  # YAML's 'false' is text, and a str is a tuple of letters: say so instead
            kw[name] = _typed(name, value, types[name])
        return cls(**kw)
