"""specprune-eval on synthetic episode bags: report files, counts that match the bag, the node's schedule,
``off`` = baseline, and the real loader on the tiny checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from specprune_ros.bags.bagio import Bag
from specprune_ros.bags.evaluate import main
from specprune_ros.bags.synth import CAMERA_TOPICS, INSTRUCTION_TOPIC, JOINT_STATES_TOPIC, EpisodeSpec, write_episode_bag

REPORT_FILES = ("summary.json", "index.html", "latency.png", "tokens.png", "modes.png")


@pytest.fixture(scope="module")
def episode(tmp_path_factory) -> Path:
    """2 s, 10 fps, joint states serialized by rclpy (driver bytes, empty efforts)."""
    root = tmp_path_factory.mktemp("eval_bags")
    return write_episode_bag(root / "ep", EpisodeSpec(seconds=2.0, fps=10, joint_rate=50), storage="mcap", joint_bytes="rclpy")


def run_eval(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def check_consistent(summary: dict, bag_path: Path) -> None:
    """Numbers that must agree with each other and with the bag, whatever the timing."""
    with Bag(bag_path) as bag:
        counts = {t: i.count for t, i in bag.topics().items()}
        frame_stamps = {
            conn.topic: [] for conn in bag.select(list(CAMERA_TOPICS.values()))
        }
        for conn, _, raw in bag.messages(bag.select(list(CAMERA_TOPICS.values()))):
            h = bag.deserialize(raw, conn.msgtype).header
            frame_stamps[conn.topic].append(h.stamp.sec + h.stamp.nanosec * 1e-9)
    c = summary["counts"]
    # every message of the fed topics was fed, every frame counted
    assert c["frames"] == {v: counts[t] for v, t in CAMERA_TOPICS.items()}
    assert c["messages_fed"][JOINT_STATES_TOPIC] == counts[JOINT_STATES_TOPIC]
    assert c["messages_fed"][INSTRUCTION_TOPIC] == 1
    n = c["observations"]
    assert n > 0
    obs = summary["observations"]
    assert len(obs) == n == summary["baseline"]["steps"]
    # every observation is traceable to recorded frames: its stamp is a primary frame stamp, the wrist frame
    # used is a recorded wrist frame
    for o in obs:
        assert o["stamp"] in frame_stamps[CAMERA_TOPICS["primary"]]
        assert o["image_stamps"]["wrist"] in frame_stamps[CAMERA_TOPICS["wrist"]]
    # frames used + frames not used = frames of the reference view
    assert n + c["unused_reference_frames"] == c["frames"]["primary"]
    # the node's schedule: the next query comes when the executed rows are done (no refusal in between here)
    rows = len(summary["actions"]["baseline"][0])
    dt = summary["schedule"]["dt"]
    gaps = np.diff([o["t"] for o in obs])
    limit = min(summary["schedule"]["execute_steps"] or rows, rows)
    np.testing.assert_allclose(gaps, limit * dt, atol=1e-6)
    base_total = summary["baseline"]["latency_ms"]["total"]["median"]
    for name, s in summary["presets"].items():
        assert s["steps"] == n, name
        assert len(s["timeline"]) == n
        assert [p["stamp"] for p in s["timeline"]] == [o["stamp"] for o in obs]  # same observations for all
        assert s["speedup_vs_baseline"] == pytest.approx(base_total / s["latency_ms"]["total"]["median"])
        assert sum(s["modes"].values()) == n


def test_fake_policy_report(episode, tmp_path, capsys):
    out = tmp_path / "report"
    code, stdout, err = run_eval(capsys, episode, "--fake-policy", "--presets=off,paper", "--out", out, "--json")
    assert code == 0, err
    for name in (*REPORT_FILES, "actions_off.png", "actions_paper.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    index = (out / "index.html").read_text()
    for name in ("latency.png", "tokens.png", "modes.png", "actions_paper.png"):
        assert f'src="{name}"' in index
    summary = json.loads((out / "summary.json").read_text())
    check_consistent(summary, episode)
    brief = json.loads(stdout)  # --json: the summary without per-step lists
    assert brief["counts"] == summary["counts"] and "observations" not in brief
    off = summary["presets"]["off"]
    assert off["action_deviation"]["mean_abs"] == 0.0
    assert off["action_deviation"]["per_dim_max_abs"] == [0.0] * 7
    # the fake policy answers from the images: each chunk depends on the observation
    actions = np.array(summary["actions"]["baseline"])  # (N, T, A)
    assert len({a.tobytes() for a in actions}) == len(actions)


def test_tiny_checkpoint_real_loader(episode, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    code, _, err = run_eval(
        capsys, episode, f"--checkpoint={tiny_checkpoint}", "--presets=off,paper,paper+merge", "--out", out,
        "--max-steps=3",
    )
    assert code == 0, err
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["observations"] == 3
    base, off, paper = summary["baseline"], summary["presets"]["off"], summary["presets"]["paper"]
    assert base["steps"] == off["steps"] == paper["steps"] == 3
    # a second unpruned instance on the same observations gives the same actions: zero deviation
    assert off["action_deviation"]["max_abs"] == 0.0
    assert off["tokens"]["kept_visual_median"] == base["tokens"]["kept_visual_median"] == 512
    assert set(base["modes"]) == {"off"}
    # pruning keeps fewer visual tokens and changes the actions a little, but stays finite
    assert paper["tokens"]["kept_visual_median"] < 512
    assert 0.0 < paper["action_deviation"]["mean_abs"] < np.inf
    assert set(paper["modes"]) <= {"coarse", "fine"}
    for s in (off, paper):
        assert s["speedup_vs_baseline"] == pytest.approx(
            base["latency_ms"]["total"]["median"] / s["latency_ms"]["total"]["median"]
        )
        assert {"preprocess", "vision", "llm", "head", "total"} <= set(s["latency_ms"])
    # the suffix turns merge on for that run only: same preset, other actions
    merged = summary["presets"]["paper+merge"]
    assert merged["preset"] == "paper" and merged["steps"] == 3
    assert merged["action_deviation"]["mean_abs"] != paper["action_deviation"]["mean_abs"]


def test_premise_check_on_the_bags_observations(episode, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    code, _, err = run_eval(capsys, episode, f"--checkpoint={tiny_checkpoint}", "--presets=paper", "--out", out,
                            "--max-steps=2", "--premise", "--no-plots")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    premise = summary["premise"]
    assert premise["frames"] == summary["counts"]["observations"] == 2
    assert premise["top"] == 20 and premise["chance"] == 20 / 256
    assert all(0.0 <= premise[k] <= 1.0 for k in ("text_l0_in_last", "text_l1_in_last", "text_l01_in_last"))
    assert "Premise of the first-layer selection" in (out / "index.html").read_text()
    assert len(premise["action_visual_tokens"]) == len(premise["action_visual_share"]) >= 2
    assert "Where the action read-out looks" in (out / "index.html").read_text()
    # without the flag: no premise entry, nothing in the page
    code, _, err = run_eval(capsys, episode, f"--checkpoint={tiny_checkpoint}", "--presets=paper", "--out", out,
                            "--max-steps=1", "--no-plots")
    assert code == 0 and "premise" not in json.loads((out / "summary.json").read_text())
    assert "Premise" not in (out / "index.html").read_text()
    code, _, err = run_eval(capsys, episode, "--fake-policy", "--premise", "--out", out)
    assert code == 2 and "--premise needs --checkpoint" in err


def test_premise_meter_counts_the_agreement(tiny_checkpoint):
    from specprune_ros.core.config import PolicyConfig
    from specprune_ros.core.policy import build_policy
    from specprune_ros.core.premise import PremiseMeter
    from conftest import make_observation

    pol = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="paper"))
    whole, one = PremiseMeter(top=256), PremiseMeter(top=1)
    with pytest.raises(ValueError, match="no observation"):
        whole.result()
    for seed in range(2):
        whole.add(pol, make_observation(seed=seed))
        one.add(pol, make_observation(seed=seed))
    assert all(whole.result()[k] == 1.0 for k in whole.shares)  # the whole view agrees with itself
    assert one.result()["frames"] == 2 and any(one.result()[k] < 1.0 for k in one.shares)
    assert pol.pruner.queries == 0  # measured unpruned: the policy's pruning state is untouched
    with pytest.raises(ValueError, match="top="):
        PremiseMeter(top=0)


def test_compressed_cameras_and_topic_mapping(tmp_path, capsys):
    views = {"primary": "/cams/front/compressed", "wrist": "/cams/hand/compressed"}
    bag = write_episode_bag(
        tmp_path / "jpeg", EpisodeSpec(seconds=1.0, fps=10, joint_rate=20, views=views, image_encoding="jpeg")
    )
    out = tmp_path / "report"
    code, _, err = run_eval(capsys, bag, "--fake-policy", "--out", out)
    assert code == 2 and "camera topic(s)" in err and "/cams/front/compressed" in err  # names what the bag has
    code, _, err = run_eval(
        capsys, bag, "--fake-policy", "--out", out, "--no-plots",
        "--camera-topics", f"primary={views['primary']}", f"wrist={views['wrist']}",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["frames"] == {"primary": 10, "wrist": 10}
    assert summary["counts"]["observations"] > 0
    assert not (out / "latency.png").exists()


def test_dead_camera_is_refused_like_the_node(tmp_path, capsys):
    """A camera that stops: observations stop with reason 'stale'/'skew' once its last frame is too old."""
    bag = write_episode_bag(
        tmp_path / "dead", EpisodeSpec(seconds=2.0, fps=10, joint_rate=20, dead_view="wrist", dead_after=0.5)
    )
    out = tmp_path / "report"
    code, _, err = run_eval(capsys, bag, "--fake-policy", "--out", out, "--no-plots")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    refusals = summary["counts"]["refusals"]
    assert refusals.get("stale", 0) + refusals.get("skew", 0) > 0
    assert all(o["image_stamps"]["wrist"] <= 1_700_000_000 + 0.5 for o in summary["observations"])


def test_frozen_camera_is_refused_like_the_node(tmp_path, capsys):
    """A camera republishing one image with fresh stamps: refused as 'frozen' after frozen_timeout (2 s)."""
    bag = write_episode_bag(
        tmp_path / "frozen", EpisodeSpec(seconds=3.5, fps=10, joint_rate=20, frozen_view="primary", frozen_after=0.5)
    )
    out = tmp_path / "report"
    code, _, err = run_eval(capsys, bag, "--fake-policy", "--out", out, "--no-plots", "-p", "execute_steps:=2")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["refusals"].get("frozen", 0) > 0
    assert "frozen" in summary["refusal_examples"]["frozen"]
    # identical frames are accepted until they have been identical for longer than frozen_timeout
    times = [o["t"] for o in summary["observations"]]
    assert 2.0 < max(times) <= 0.5 + 2.0 + 0.1 + 1e-6


def test_bad_arguments(episode, tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run_eval(capsys, episode, "--fake-policy", "--presets=paper,fancy", "--out", out)
    assert code == 2 and "fancy" in err and "aggressive" in err
    code, _, err = run_eval(capsys, episode, "--fake-policy", "--presets=off+merge", "--out", out)
    assert code == 2 and "prunes nothing" in err
    code, _, err = run_eval(capsys, episode, "--fake-policy", "--camera-topics=side=/x", "--out", out)
    assert code == 2 and "side" in err
    code, _, err = run_eval(capsys, episode, "--checkpoint", tmp_path / "nope", "--out", out)
    assert code == 2 and "nope" in err
    for bad in ("-0.05", "1.0e-12", ".nan"):  # a control period of zero ticks would never advance
        code, _, err = run_eval(capsys, episode, "--fake-policy", "-p", f"control_dt:={bad}", "--out", out)
        assert code == 2 and "control_dt" in err, err
    code, _, err = run_eval(capsys, episode, "--fake-policy", "-p", "joint_states_topic:=/instruction", "--out", out)
    assert code == 2 and "topic /instruction carries std_msgs/msg/String, not sensor_msgs/msg/JointState" in err
    assert "Traceback" not in err


def humble_layout(path: Path) -> Path:
    """Rewrite a sqlite3 bag's metadata.yaml the way Humble's rosbag2 writes it: version 5, each topic's QoS
    profiles as one YAML string with numeric enums (the same text the database's topics table holds), no
    type hashes, no ros_distro."""
    import yaml
    from rosbags.rosbag2.metadata import dump_qos_v8, parse_qos

    meta_path = path / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    info = meta["rosbag2_bagfile_information"]
    info["version"] = 5
    for key in ("ros_distro", "custom_data"):
        info.pop(key, None)
    for t in info["topics_with_message_count"]:
        md = t["topic_metadata"]
        md.pop("type_description_hash", None)
        md["offered_qos_profiles"] = dump_qos_v8(parse_qos(md["offered_qos_profiles"]))
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    return path


def test_humble_metadata_layout(tmp_path):
    from specprune_ros.bags.evaluate import evaluate_bag

    bag = humble_layout(write_episode_bag(tmp_path / "humble", EpisodeSpec(seconds=1.0, fps=10, joint_rate=20), storage="sqlite3"))
    with Bag(bag) as b:
        assert b.distro is None
        qos = b.topics()[INSTRUCTION_TOPIC].qos
        assert [q.durability.name for q in qos] == ["TRANSIENT_LOCAL"]  # read from the YAML string
    summary = evaluate_bag(bag, tmp_path / "report", fake_policy=True, presets=("off",), plots=False)
    assert summary["counts"]["frames"] == {"primary": 10, "wrist": 10}
    assert summary["counts"]["observations"] > 0
    assert summary["presets"]["off"]["action_deviation"]["max_abs"] == 0.0
    assert (tmp_path / "report" / "index.html").is_file()


def test_node_params_drive_the_schedule(episode, tmp_path, capsys):
    """execute_steps: 2 in the node's params file -> a query every 2 control periods (0.1 s = every frame)."""
    params = tmp_path / "params.yaml"
    params.write_text("specprune_policy:\n  ros__parameters:\n    execute_steps: 2\n    fake_chunk_len: 6\n")
    out = tmp_path / "report"
    code, _, err = run_eval(capsys, episode, "--fake-policy", f"--params={params}", "--presets=off", "--out", out, "--no-plots")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    check_consistent(summary, episode)
    assert summary["schedule"]["execute_steps"] == 2
    assert len(summary["actions"]["baseline"][0]) == 6
    gaps = np.diff([o["t"] for o in summary["observations"]])
    np.testing.assert_allclose(gaps, 2 * summary["schedule"]["dt"], atol=1e-6)
    # every frame after the first query is used once
    assert summary["counts"]["unused_reference_frames"] == 0
    # -p overrides the file, with the node's own checks
    code, _, err = run_eval(capsys, episode, "--fake-policy", f"--params={params}", "-p", "execute_steps:=4",
                            "--presets=off", "--out", out, "--no-plots")  # fmt: skip
    assert code == 0, err
    gaps = np.diff([o["t"] for o in json.loads((out / "summary.json").read_text())["observations"]])
    np.testing.assert_allclose(gaps, 4 * summary["schedule"]["dt"], atol=1e-6)
    code, _, err = run_eval(capsys, episode, "--fake-policy", "-p", "exec_steps:=2", "--out", out)
    assert code == 2 and "exec_steps" in err and "execute_steps" in err
    code, _, err = run_eval(capsys, episode, "--fake-policy", "-p", "max_age:=[1, 2]", "--out", out)
    assert code == 2 and "max_age" in err


def test_each_run_gets_its_own_executed_rows(episode):
    """As in the node: the rows executed since the last query go with the next observation, per run."""
    from specprune_ros.bags.evaluate import RunRecord, evaluate, inputs_from_node_config
    from specprune_ros.core.fake import FakePolicy
    from specprune_ros.ros.parameters import configs_from_values

    node_cfg, _ = configs_from_values({"execute_steps": 3})
    inputs = inputs_from_node_config(node_cfg)
    runs = [RunRecord(n, "off", FakePolicy(proprio_dim=8)) for n in ("baseline", "other")]
    with Bag(episode) as bag:
        trace = evaluate(bag, inputs, runs, dt=0.05, instruction=None, max_steps=4, progress=False)
    assert len(trace["observations"]) == 4
    for run in runs:
        seen = run.policy.seen
        assert seen[0].executed_actions is None
        for k in range(1, 4):
            np.testing.assert_array_equal(seen[k].executed_actions, run.chunks[k - 1][:3])
        assert [o.stamp for o in seen] == [o["stamp"] for o in trace["observations"]]
        assert seen[0].proprio.shape == (8,) and seen[0].ee_speed is not None  # FK from the bag's URDF


def test_new_instruction_resets_the_policies(tmp_path):
    """Like the node: the first instruction and every change of it reset each policy before its next query."""
    from specprune_ros.bags.evaluate import RunRecord, evaluate, inputs_from_node_config
    from specprune_ros.core.fake import FakePolicy
    from specprune_ros.ros.parameters import configs_from_values

    spec = EpisodeSpec(seconds=2.0, fps=10, joint_rate=20, later_instructions=((1.0, "now stack the cubes"),))
    path = write_episode_bag(tmp_path / "two_tasks", spec)
    inputs = inputs_from_node_config(configs_from_values({})[0])
    runs = [RunRecord(n, "off", FakePolicy(proprio_dim=8)) for n in ("baseline", "other")]
    with Bag(path) as bag:
        trace = evaluate(bag, inputs, runs, dt=0.05, instruction=None, progress=False)
    assert trace["policy_resets"] == 2
    for run in runs:
        assert run.policy.resets == 2
        texts = [o.instruction for o in run.policy.seen]
        assert texts[0] == spec.instruction and texts[-1] == "now stack the cubes"
        switch = texts.index("now stack the cubes")
        assert all(t == spec.instruction for t in texts[:switch])


def test_inputs_come_from_the_node_config_derivation(monkeypatch):
    """The evaluator takes the synchronizer and proprio settings from NodeConfig.sync_config() /
    proprio_config(), the functions the node's configure step uses, not from a copy of their rules."""
    from specprune_ros.bags.evaluate import inputs_from_node_config
    from specprune_ros.core.proprio import ProprioConfig
    from specprune_ros.core.sync import SyncConfig
    from specprune_ros.ros.parameters import NodeConfig, configs_from_values

    node_cfg, _ = configs_from_values({"max_age": 0.7, "proprio_sources": ["joint_positions"], "proprio_joints": ["a"]})
    inputs = inputs_from_node_config(node_cfg)
    assert inputs.sync == node_cfg.sync_config() and inputs.proprio == node_cfg.proprio_config()
    marker_sync = SyncConfig(views=("primary", "wrist"), max_age=4.25, require_joint_states=False)
    marker_proprio = ProprioConfig(sources=("joint_velocities",), joints=("b",))
    monkeypatch.setattr(NodeConfig, "sync_config", lambda self: marker_sync)
    monkeypatch.setattr(NodeConfig, "proprio_config", lambda self: marker_proprio)
    inputs = inputs_from_node_config(node_cfg)
    assert inputs.sync is marker_sync and inputs.proprio is marker_proprio


def test_non_finite_actions_are_counted_not_reported_as_chunks():
    from specprune_ros.bags.evaluate import RunRecord, _infer
    from specprune_ros.core.fake import FakePolicy

    class Raising(FakePolicy):
        def infer(self, obs):
            raise FloatingPointError("the model produced NaN or inf actions")

    run = RunRecord("paper", "paper", Raising(views=("primary", "wrist"), proprio_dim=8))
    from conftest import make_observation

    assert _infer(run, make_observation()) is None
    assert run.refused["non_finite_actions"] == 1 and run.chunks == []


def rewrite_bag(src: Path, dst: Path, edit) -> Path:
    """A sqlite3 copy of the bag ``src`` in which ``edit(topic, index, msg)`` changed messages in place (index:
    the message's number on its topic)."""
    from rosbags.rosbag2 import Writer

    with Bag(src) as bag:
        writer = Writer(dst, version=9)
        writer.open()
        conns: dict = {}
        for conn, stamp, raw in bag.messages():
            if conn.topic not in conns:
                conns[conn.topic] = [writer.add_connection(conn.topic, conn.msgtype, typestore=bag.typestore), 0]
            msg = bag.deserialize(raw, conn.msgtype)
            edit(conn.topic, conns[conn.topic][1], msg)
            conns[conn.topic][1] += 1
            writer.write(conns[conn.topic][0], stamp, bag.typestore.serialize_cdr(msg, conn.msgtype))
        writer.close()
    return dst


def test_a_reference_frame_is_used_at_most_once(episode, tmp_path, capsys):
    """Queries due faster than frames arrive (execute_steps 1: every 0.05 s; frames every 0.1 s): like the
    node, the evaluator waits for a new primary frame instead of querying twice on one."""
    out = tmp_path / "report"
    code, _, err = run_eval(capsys, episode, "--fake-policy", "--presets=off", "--out", out, "--no-plots",
                            "-p", "execute_steps:=1")  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    seqs = [o["frame_seq"] for o in summary["observations"]]
    assert seqs == sorted(set(seqs))
    c = summary["counts"]
    assert c["unused_reference_frames"] >= 0
    assert c["observations"] + c["unused_reference_frames"] == c["frames"]["primary"]
    np.testing.assert_allclose(np.diff([o["t"] for o in summary["observations"]]), 0.1, atol=1e-6)


def test_a_refused_frame_is_not_offered_again(episode):
    """As in the node: after the policy refused an observation, the next query waits for a new frame; the
    refusal's message is kept per run."""
    from specprune_ros.bags.evaluate import RunRecord, evaluate, inputs_from_node_config
    from specprune_ros.core.fake import FakePolicy
    from specprune_ros.core.types import InputError
    from specprune_ros.ros.parameters import configs_from_values

    class Refusing(FakePolicy):
        def infer(self, obs):
            self.seen.append(obs)
            raise InputError("view 'primary': image 1x1 is too small")

    inputs = inputs_from_node_config(configs_from_values({})[0])
    runs = [RunRecord(n, "off", Refusing(proprio_dim=8)) for n in ("baseline", "other")]
    with Bag(episode) as bag:
        trace = evaluate(bag, inputs, runs, dt=0.05, instruction=None, progress=False)
    seqs = [o["frame_seq"] for o in trace["observations"]]
    assert len(seqs) == len(set(seqs)) == trace["frames"]["primary"] - trace["unused_reference_frames"]
    for run in runs:
        assert run.refused == {"policy_input": len(seqs)} and len(run.policy.seen) == len(seqs)
        assert run.refusal_examples == {"policy_input": "view 'primary': image 1x1 is too small"}


def test_a_policy_refusing_every_observation_is_an_error(tmp_path, capsys):
    """1x1 primary frames: the synchronizer builds observations, the policy refuses each one; that is no
    report of a successful run, and the refusal's message is said."""
    src = write_episode_bag(tmp_path / "ep", EpisodeSpec(seconds=1.0, fps=10, joint_rate=20), storage="sqlite3")

    def one_pixel(topic, _, msg):
        if topic == CAMERA_TOPICS["primary"]:
            msg.height, msg.width, msg.step, msg.data = 1, 1, 3, np.zeros(3, np.uint8)

    bag = rewrite_bag(src, tmp_path / "tiny_frames", one_pixel)
    out = tmp_path / "report"
    code, stdout, err = run_eval(capsys, bag, "--fake-policy", "--presets=paper", "--out", out, "--no-plots", "--json")
    assert code == 2 and stdout == ""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "answered none of the" in err and "'policy_input'" in err and "image 1x1 is too small" in err
    summary = json.loads((out / "summary.json").read_text())
    for run in (summary["baseline"], summary["presets"]["paper"]):
        assert run["steps"] == 0 and run["refused"] == {"policy_input": summary["counts"]["observations"]}
        assert "image 1x1 is too small" in run["refusal_examples"]["policy_input"]


def test_two_views_on_one_topic(episode, tmp_path, capsys):
    """Like the node, which subscribes once per view: a topic mapped to two views feeds both."""
    out = tmp_path / "report"
    primary = CAMERA_TOPICS["primary"]
    code, _, err = run_eval(capsys, episode, "--fake-policy", "--presets=off", "--out", out, "--no-plots",
                            "--camera-topics", f"primary={primary}", f"wrist={primary}")  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    with Bag(episode) as bag:
        frames = bag.topics()[primary].count
    assert summary["counts"]["frames"] == {"primary": frames, "wrist": frames}
    assert summary["counts"]["observations"] > 0
    assert all(o["image_stamps"]["wrist"] == o["stamp"] for o in summary["observations"])


def test_rejected_inputs_are_reported_with_their_reason(tmp_path, capsys):
    """Joint states with 9 names but 7 positions: their count and the first message are in summary.json and
    in the error (no observation) or the warning (some joint states usable)."""
    src = write_episode_bag(tmp_path / "ep", EpisodeSpec(seconds=1.0, fps=10, joint_rate=20), storage="sqlite3")
    reason = "joint state has 9 names but 7 positions"
    with Bag(src) as b:
        n_joint_states = b.topics()[JOINT_STATES_TOPIC].count
    for name, bad in (("all_bad", lambda k: True), ("every_other_bad", lambda k: k % 2 == 1)):

        def short(topic, k, msg, bad=bad):
            if topic == JOINT_STATES_TOPIC and bad(k):
                msg.position = msg.position[:-2]

        bag = rewrite_bag(src, tmp_path / name, short)
        out = tmp_path / f"report_{name}"
        code, _, err = run_eval(capsys, bag, "--fake-policy", "--presets=off", "--out", out, "--no-plots")
        summary = json.loads((out / "summary.json").read_text())
        n_bad = n_joint_states if name == "all_bad" else n_joint_states // 2
        assert summary["counts"]["input_errors"] == {"bad_joint_state": n_bad}
        assert summary["input_error_examples"] == {"bad_joint_state": reason}
        assert "Traceback" not in err
        if name == "all_bad":
            assert code == 2 and "error: no observation could be built" in err
            assert f"inputs rejected: {n_bad} bad_joint_state ({reason})" in err
        else:
            assert code == 0, err
            assert f"warning: inputs rejected: {n_bad} bad_joint_state ({reason})" in err


def test_runs_are_warmed_up_untimed_and_take_turns_going_first(episode, tmp_path, capsys, monkeypatch):
    """Each policy answers one warm-up observation before the timed ones (not timed, not a step), and the run
    meeting an observation first rotates, so no run always pays for a cold observation."""
    import specprune_ros.core.fake as fake

    calls: list[tuple[int, str]] = []  # (policy, instruction) per inference, in call order

    class Recording(fake.FakePolicy):
        def infer(self, obs):
            calls.append((id(self), obs.instruction))
            return super().infer(obs)

    monkeypatch.setattr(fake, "FakePolicy", Recording)
    out = tmp_path / "report"
    code, _, err = run_eval(capsys, episode, "--fake-policy", "--presets=off,paper", "--out", out, "--no-plots")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    n = summary["counts"]["observations"]
    policies = list(dict.fromkeys(p for p, _ in calls))
    assert len(policies) == 3 and len(calls) == 3 + 3 * n
    assert calls[:3] == [(p, "warm up") for p in policies]  # baseline, off, paper: one untimed call each
    for run in (summary["baseline"], *summary["presets"].values()):
        assert run["steps"] == len(run["timeline"]) == n
    firsts = [calls[3 + 3 * k][0] for k in range(n)]
    assert firsts == [policies[k % 3] for k in range(n)]
