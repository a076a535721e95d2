"""Shared fixtures: a tiny random-weight checkpoint in the released layout, sample observations."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# child processes are stopped with SIGINT like Ctrl-C: they must not inherit it ignored (a test run started
# in the background by a shell without job control would), so that disposition is not passed on
from specprune_ros.cli.common import interruptible  # noqa: E402

interruptible()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint written by the project's own generator (read back by the real loader)."""
    from specprune_ros.core.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture
def tiny_checkpoint_copy(tiny_checkpoint, tmp_path) -> Path:
    """A private copy that a test may damage."""
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, dst)
    return dst


def make_observation(seed: int = 0, size=(256, 256), instruction="put the red cube on the blue plate", stamp=0.0):
    from specprune_ros.core.types import Observation

    rng = np.random.default_rng(seed)
    return Observation(
        images={
            "primary": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
        },
        proprio=rng.uniform(-0.4, 0.4, 8),
        instruction=instruction,
        stamp=stamp,
    )


@pytest.fixture
def observation():
    return make_observation()
