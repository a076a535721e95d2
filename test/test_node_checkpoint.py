"""Node end to end with the real policy on the tiny checkpoint (random weights, released layout): pruned
chunks with the right shape, stamps and sequence numbers; measured EE speed reaches the policy."""
from __future__ import annotations

import numpy as np
import pytest
from node_harness import Harness
from ros_env import ros_context  # noqa: F401  (fixture)


def test_tiny_checkpoint_end_to_end(ros_context, tiny_checkpoint):
    h = Harness(
        ros_context,
        {
            "checkpoint": str(tiny_checkpoint),
            "preset": "paper",
            "execute_steps": 2,
            "debug_image": True,
            "center_crop": True,
            "warmup": True,
        },
    )
    try:
        assert h.node.policy is not None and type(h.node.policy).__name__ == "OFTPolicy"
        f = h.feed(rate=30.0, size=96)
        f.joint_velocities = [0.1, -0.2, 0.1, 0.2, 0.0, 0.1, -0.1, 0.0, 0.0]
        h.wait_chunks(4, timeout=30)
        chunks = list(h.chunks)
        assert [c.sequence for c in chunks] == list(range(len(chunks)))
        published = list(f.published)
        for c in chunks:
            assert (c.rows, c.cols) == (8, 7) and len(c.actions) == 56
            assert np.all(np.isfinite(c.actions))
            assert c.preset == "paper" and c.mode in ("coarse", "fine")
            assert 0 < c.tokens_kept <= 512 and c.tokens_total > 512
            assert len(c.tokens_kept_per_view) == 2
            stamp = c.header.stamp.sec + c.header.stamp.nanosec * 1e-9
            assert min(abs(stamp - t) for t in published) < 1e-6  # the stamp of a frame that was published
            assert c.inference_latency > 0
        stats = {s.sequence: s for s in h.stats}
        s0 = stats[chunks[0].sequence]
        assert "llm" in s0.stage_names and len(s0.stage_names) == len(s0.stage_ms)
        assert len(s0.tokens_per_layer) == len(s0.visual_tokens_per_layer) > 0
        assert s0.tokens_per_layer[0] == chunks[0].tokens_total
        assert min(s0.visual_tokens_per_layer) <= chunks[0].tokens_kept  # visual tokens were pruned
        _, _, values = h.wait_diag(lambda lv, m, v: v.get("ee_speed_source") == "jacobian", what="EE speed from J qdot")
        assert values["preset"] == "paper"
        assert h.debug_images and h.debug_images[0].width == 96
    finally:
        h.close()


@pytest.mark.parametrize("preset", ["off"])
def test_tiny_checkpoint_unpruned(ros_context, tiny_checkpoint, preset):
    h = Harness(ros_context, {"checkpoint": str(tiny_checkpoint), "preset": preset, "execute_steps": 1})
    try:
        h.feed(rate=30.0, size=64)
        h.wait_chunks(2, timeout=30)
        c = h.chunks[0]
        assert c.tokens_kept == 512 and c.mode == "off" and c.preset == "off"
    finally:
        h.close()
