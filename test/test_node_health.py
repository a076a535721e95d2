"""NodeHealth (what /diagnostics reports), without ROS."""
from specprune_ros.ros.diagnostics import ERROR, OK, WARN, NodeHealth


def _chunk(health: NodeHealth) -> None:
    health.chunk(0.01, "coarse", "paper", 100, 512, "none")


def test_error_cleared_before_a_report_is_still_reported_once():
    health = NodeHealth(views=("primary",))
    _chunk(health)
    assert health.snapshot()[0] == OK
    health.failure("inference failed: boom")
    _chunk(health)  # the next call succeeds before anyone reads the level
    level, message, values = health.snapshot()
    assert level == ERROR
    assert "inference failed: boom" in message and "since recovered: producing action chunks" in message
    assert values["inference_errors"] == "1" and values["last_error"] == "inference failed: boom"
    level, message, _ = health.snapshot()  # reported once, then the current level again
    assert (level, message) == (OK, "producing action chunks")


def test_an_error_still_current_is_reported_plainly_and_kept():
    health = NodeHealth()
    health.error("checkpoint not found: /x")
    assert health.snapshot()[:2] == (ERROR, "checkpoint not found: /x")
    assert health.snapshot()[:2] == (ERROR, "checkpoint not found: /x")


def test_a_cleared_error_outranks_a_later_warning_once():
    health = NodeHealth()
    health.failure("inference failed: boom")
    health.refusal("stale", "camera primary is stale")
    level, message, _ = health.snapshot()
    assert level == ERROR and message.startswith("inference failed: boom (since recovered: camera primary is stale")
    assert health.snapshot()[:2] == (WARN, "camera primary is stale")


def test_unknown_parameters_warn_only_over_ok():
    health = NodeHealth()
    health.unknown_parameters = ["foo"]
    _chunk(health)
    assert health.snapshot()[:2] == (WARN, "unknown parameters ignored: foo")
    health.failure("inference failed: boom")
    assert health.snapshot()[0] == ERROR


def test_bridge_health_levels():
    from specprune_ros.ros.diagnostics import BridgeHealth

    health = BridgeHealth()
    assert health.snapshot()[:2] == (WARN, "simulator starting")
    health.episode_update(0, "running", started=True)
    health.chunk_dropped("stale_chunk")  # answers no pending observation: counted, not an error
    level, message, values = health.snapshot()
    assert (level, message) == (OK, "episode 0: running") and values["dropped.stale_chunk"] == "1"
    health.failure("the simulator failed: boom")
    assert health.snapshot()[2]["episode_status"] == "failure"
    health.episode_update(0, "failure")  # the episode's end does not hide the failure
    assert health.snapshot()[:2] == (ERROR, "the simulator failed: boom")
    assert health.snapshot()[:2] == (ERROR, "the simulator failed: boom")  # still current
    health.episode_update(1, "running", started=True)  # a new episode clears it
    level, message, values = health.snapshot()
    assert (level, message) == (OK, "episode 1: running") and values["last_error"] == "the simulator failed: boom"
    health.chunk_refused("step_dt", "action chunk 3 rejected: step_dt=0.1")
    assert health.snapshot()[0] == ERROR
    health.chunk_accepted()
    level, message, values = health.snapshot()
    assert (level, message) == (OK, "episode 1: executing action chunks")
    assert values["refused.step_dt"] == "1" and values["chunks_accepted"] == "1" and values["chunks_refused"] == "1"


def test_bridge_health_warns_when_every_chunk_is_stale():
    from specprune_ros.ros.diagnostics import BridgeHealth

    health = BridgeHealth()
    health.episode_update(0, "running", started=True)
    health.chunk_dropped("stale_chunk")
    health.chunk_dropped("stale_chunk")  # two in a row: normal after an episode's start
    assert health.snapshot()[:2] == (OK, "episode 0: running")
    health.chunk_accepted()
    health.chunk_dropped("stale_chunk")
    health.chunk_dropped("no_episode")  # not stale: does not count
    health.chunk_dropped("stale_chunk")
    assert health.snapshot()[0] == OK
    health.chunk_dropped("stale_chunk")  # three stale in a row, none accepted in between
    level, message, values = health.snapshot()
    assert level == WARN and "3 action chunks in a row dropped as stale" in message
    assert "predate" in message and "clocks disagree" in message and "use_sim_time" in message
    assert values["dropped.stale_chunk"] == "5" and values["last_error"] == message
    health.chunk_dropped("stale_chunk")
    health.episode_update(0, "running")  # not a new episode: still WARN
    assert health.snapshot()[0] == WARN
    health.chunk_accepted()  # a chunk runs: OK again
    assert health.snapshot()[:2] == (OK, "episode 0: executing action chunks")
    for _ in range(3):
        health.chunk_dropped("stale_chunk")
    assert health.snapshot()[0] == WARN
    health.episode_update(1, "running", started=True)  # a new episode starts counting again
    assert health.snapshot()[:2] == (OK, "episode 1: running")
    health.chunk_dropped("stale_chunk")
    assert health.snapshot()[0] == OK
    health.chunk_refused("invalid_chunk", "action chunk with NaN or inf refused")
    for _ in range(3):
        health.chunk_dropped("stale_chunk")  # an ERROR is not lowered to a WARN
    assert health.snapshot()[:2] == (ERROR, "action chunk with NaN or inf refused")


def test_bridge_health_unknown_parameters_warn_only_over_ok():
    from specprune_ros.ros.diagnostics import BridgeHealth

    health = BridgeHealth()
    health.unknown_parameters = ["episode"]
    health.episode_update(0, "running", started=True)
    level, message, values = health.snapshot()
    assert (level, message) == (WARN, "unknown parameters ignored: episode") and values["unknown_parameters"] == "episode"
    health.chunk_refused("invalid_chunk", "action chunk with NaN or inf refused")
    assert health.snapshot()[0] == ERROR
