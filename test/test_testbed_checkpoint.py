"""The committed test-bed checkpoint loads with the normal loader and reproduces its recorded results.

checkpoints/testbed/reproduce.json holds, for a few fixed evaluation seeds, what the checkpoint did when it
was committed (1 CPU thread, the preset named in the file): the first action chunk of each episode and the
closed-loop outcome (success, whether the named object was grasped, episode length). A short run must
match both.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from specprune_ros.core.config import PolicyConfig
from specprune_ros.core.policy import build_policy
from specprune_ros.core.types import Observation
from specprune_ros.testbed.evaluate import run_episode
from specprune_ros.testbed.task import TabletopTask, TaskConfig

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "testbed"


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((CKPT / "reproduce.json").read_text())


def test_committed_checkpoint_first_chunks_match(one_thread, record):
    policy = build_policy(PolicyConfig(checkpoint=str(CKPT), preset=record["preset"]))
    assert policy.unnorm_key == "testbed" and policy.proprio_dim == 8 and policy.chunk_len == 8
    for seed, expected in zip(record["seeds"], record["first_chunk"]):
        task = TabletopTask(seed)
        policy.reset()
        chunk = policy.infer(Observation(images=task.render(), proprio=task.proprio(), instruction=task.instruction))
        np.testing.assert_allclose(chunk.actions, np.array(expected), atol=2e-3, err_msg=f"seed {seed}")


def test_committed_checkpoint_reproduces_recorded_outcomes(one_thread, record):
    policy = build_policy(PolicyConfig(checkpoint=str(CKPT), preset=record["preset"]))
    episodes = [run_episode(policy, seed, TaskConfig(max_steps=record["max_steps"])) for seed in record["seeds"]]
    for key in ("success", "grasped", "steps"):
        got = [e[key] for e in episodes]
        assert got == record[key], f"seeds {record['seeds']}: {key} {got}, recorded {record[key]}"
