"""Bad bags and bad arguments: one clear line naming the problem, non-zero exit, no traceback."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from ros_env import subprocess_env

from specprune_ros.bags import evaluate, record, replay
from specprune_ros.bags.bagio import Bag, BagError
from specprune_ros.bags.synth import CAMERA_TOPICS, EpisodeSpec, write_episode_bag

SPEC = EpisodeSpec(seconds=0.5, fps=10, joint_rate=20, image_size=64)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("good")
    return {s: write_episode_bag(root / s, SPEC, storage=s) for s in ("sqlite3", "mcap")}


def damaged(good: dict[str, Path], storage: str, tmp_path: Path, how: str) -> Path:
    src = good[storage]
    dst = tmp_path / f"{storage}_{how}"
    shutil.copytree(src, dst)
    storage_file = next(p for p in dst.iterdir() if p.suffix in (".db3", ".mcap"))
    data = storage_file.read_bytes()
    storage_file.write_bytes(b"" if how == "empty" else data[: len(data) // 2])
    return dst


def one_line_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_truncated_or_empty_storage(good, tmp_path, capsys, storage, how):
    bag = damaged(good, storage, tmp_path, how)
    with pytest.raises(BagError, match=str(bag.name)):
        with Bag(bag) as b:
            list(b.messages())
    assert replay.main([str(bag), "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "specprune-replay: error:", bag.name)
    assert evaluate.main([str(bag), "--fake-policy", f"--out={tmp_path / 'r'}", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "specprune-eval: error:", bag.name)


def test_corrupt_bag_cli_exit_status(good, tmp_path):
    """The installed command, as a user runs it: exit status 2, one line on stderr, no traceback."""
    bag = damaged(good, "sqlite3", tmp_path, "truncated")
    proc = subprocess.run([str(BIN / "specprune-replay"), str(bag)], env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "corrupt or truncated")


def test_not_a_bag(tmp_path, capsys):
    assert replay.main([str(tmp_path / "missing")]) == 2
    one_line_error(capsys.readouterr().err, "does not exist")
    (tmp_path / "empty_dir").mkdir()
    assert replay.main([str(tmp_path / "empty_dir")]) == 2
    one_line_error(capsys.readouterr().err, "no metadata.yaml")
    (tmp_path / "notes.txt").write_text("hello")
    assert evaluate.main([str(tmp_path / "notes.txt"), "--fake-policy", f"--out={tmp_path / 'r'}"]) == 2
    one_line_error(capsys.readouterr().err, "not a rosbag2 bag")


def test_metadata_disagrees_with_storage(good, tmp_path, capsys):
    bag = tmp_path / "edited"
    shutil.copytree(good["sqlite3"], bag)
    meta = bag / "metadata.yaml"
    meta.write_text(meta.read_text().replace("type: sensor_msgs/msg/Image", "type: sensor_msgs/msg/CompressedImage"))
    assert evaluate.main([str(bag), "--fake-policy", f"--out={tmp_path / 'r'}", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "disagree", CAMERA_TOPICS["primary"])


def test_missing_topic(good, capsys):
    assert replay.main([str(good["mcap"]), "--topics", "/nope", "/joint_states", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "/nope", "not in bag", CAMERA_TOPICS["primary"])
    assert replay.main([str(good["mcap"]), "--remap=/elsewhere:=/x", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "/elsewhere")
    assert replay.main([str(good["mcap"]), "--start=30", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "past the end")


def test_bad_option_values(good, capsys):
    assert replay.main([str(good["mcap"]), "--rate=-0.5"]) == 2
    one_line_error(capsys.readouterr().err, "--rate", "-0.5")
    assert replay.main([str(good["mcap"]), "--remap=/a/b"]) == 2
    one_line_error(capsys.readouterr().err, "OLD:=NEW")
    for option in ("--delay=inf", "--delay=nan", "--wait-for-subscribers=nan"):
        assert replay.main([str(good["mcap"]), option]) == 2
        one_line_error(capsys.readouterr().err, option.split("=")[0], "must lie in [0, 86400]")
    assert replay.main([str(good["mcap"]), "--start=1e300", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "past the end")


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_huge_duration_plays_to_the_end(good, capsys, storage):
    import json

    counts = []
    for extra in ([], ["--duration=1e300"]):
        assert replay.main([str(good[storage]), "--rate=1000", "--no-progress", "--json", *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        counts.append({k: v for k, v in out.items() if isinstance(v, dict)})
    assert counts[0] == counts[1] and any(counts[0].values())


def test_bag_without_messages(tmp_path, capsys):
    ts = get_typestore(Stores.ROS2_KILTED)
    writer = Writer(tmp_path / "silent", version=9)
    writer.open()
    writer.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=ts)
    writer.close()
    assert replay.main([str(tmp_path / "silent"), "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "has no messages", "/joint_states")
    assert evaluate.main([str(tmp_path / "silent"), "--fake-policy", f"--out={tmp_path / 'r'}"]) == 2
    one_line_error(capsys.readouterr().err, "has no messages")


def test_unreadable_bag_directory(good, capsys, monkeypatch):
    from specprune_ros.bags import bagio

    def denied(path):  # what listing a directory without read permission raises (root is never denied)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(bagio, "resolve_bag_path", denied)
    assert replay.main([str(good["mcap"]), "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "cannot read bag", "Permission denied")


WIDGET = "acme_msgs/msg/Widget"


def unknown_type_bag(path: Path) -> Path:
    """A bag with a topic of a type that is not installed here (its definition is stored in the bag)."""
    ts = get_typestore(Stores.ROS2_KILTED)
    ts.register(get_types_from_msg("string name\nfloat64[] sizes\n", WIDGET))
    String = ts.types["std_msgs/msg/String"]
    writer = Writer(path, version=9)
    writer.open()
    widgets = writer.add_connection("/widgets", WIDGET, typestore=ts)
    text = writer.add_connection("/instruction", "std_msgs/msg/String", typestore=ts)
    for k in range(3):
        writer.write(widgets, 1_000 + k, ts.serialize_cdr(ts.types[WIDGET](name=f"w{k}", sizes=np.zeros(0)), WIDGET))
        writer.write(text, 1_001 + k, ts.serialize_cdr(String(data="hi"), "std_msgs/msg/String"))
    writer.close()
    return path


def test_unknown_message_type(tmp_path, capsys):
    bag = unknown_type_bag(tmp_path / "widgets")
    assert replay.main([str(bag), "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, WIDGET, "/widgets", "acme_msgs")
    # the definition stored in the bag still lets the offline tools decode it
    with Bag(bag) as b:
        conn = b.select(["/widgets"])[0]
        msgs = [b.deserialize(raw, conn.msgtype) for _, _, raw in b.messages([conn])]
    assert [m.name for m in msgs] == ["w0", "w1", "w2"]
    # leaving the topic out plays the rest
    assert replay.main([str(bag), "--skip-unknown", "--no-progress", "--json"]) == 0
    out = capsys.readouterr()
    assert '"/instruction": 3' in out.out and "skipping" in out.err


def test_record_refuses_existing_output(good, capsys):
    assert record.main([str(good["mcap"]), "--duration=0.1", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "exists already")
    assert record.main([str(good["mcap"]) + "_new", "--duration=-1"]) == 2
    one_line_error(capsys.readouterr().err, "--duration")


@pytest.mark.parametrize("topic", ["bad topic", "/a//b"])
def test_record_refuses_a_bad_topic_name_before_creating_the_bag(tmp_path, capsys, topic):
    out = tmp_path / "never"
    assert record.main([str(out), "--topics", topic, "--duration=0.1", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "--topics", "not a valid topic name")
    assert not out.exists()


@pytest.mark.parametrize("args,words", [
    (["--namespace=arm 1"], ("--namespace", "not a valid namespace")),
    (["--node=policy-a"], ("--node", "not a valid node name")),
    (["--node=policy_a", "--topics=/joint_states"], ("--node", "with --topics")),
])
def test_record_refuses_a_bad_namespace_or_node_before_creating_the_bag(tmp_path, capsys, args, words):
    out = tmp_path / "never"
    assert record.main([str(out), *args, "--duration=0.1", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, *words)
    assert not out.exists()


def test_eval_names_an_unreadable_params_or_urdf_file(good, tmp_path, capsys):
    png = tmp_path / "robot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01")
    (tmp_path / "bad.yaml").write_text(": : :\n")
    (tmp_path / "not_xml.urdf").write_text("not xml\n")
    (tmp_path / "a_dir").mkdir()
    cases = [
        (f"--urdf={png}", ("--urdf", "robot.png", "not a text file")),
        (f"--urdf={tmp_path / 'not_xml.urdf'}", ("--urdf", "not_xml.urdf", "not a URDF")),
        (f"--urdf={tmp_path / 'a_dir'}", ("--urdf", "a_dir", "is not a file")),
        (f"--params={tmp_path / 'bad.yaml'}", ("--params", "bad.yaml", "not valid YAML", "line 1")),
        (f"--params={tmp_path / 'a_dir'}", ("--params", "a_dir", "is not a file")),
        (f"--params={png}", ("--params", "robot.png", "not a text file")),
    ]
    for option, needles in cases:
        code = evaluate.main([str(good["mcap"]), "--fake-policy", f"--out={tmp_path / 'r'}", "--no-progress", option])
        assert code == 2, option
        one_line_error(capsys.readouterr().err, "specprune-eval: error:", *needles)
    assert not (tmp_path / "r").exists()  # refused before evaluating


def test_eval_without_any_observation_fails(good, tmp_path, capsys):
    """The bag's URDF has no frame 'nope_frame': every tick is refused, which is an error, not an empty report."""
    out = tmp_path / "r"
    code = evaluate.main([str(good["mcap"]), "--fake-policy", f"--out={out}", "--no-progress", "--no-plots",
                          "-p", "ee_frame:=nope_frame"])  # fmt: skip
    assert code == 2
    one_line_error(capsys.readouterr().err, "no observation could be built", "'no_robot_description'", "nope_frame")
    assert (out / "summary.json").is_file()  # the report that shows the refusals is still written


@pytest.mark.parametrize("text", ["", "  "])
def test_eval_refuses_an_empty_instruction(good, tmp_path, capsys, text):
    code = evaluate.main([str(good["mcap"]), "--fake-policy", f"--out={tmp_path / 'r'}", f"--instruction={text}"])
    assert code == 2
    one_line_error(capsys.readouterr().err, "--instruction must not be empty")


@pytest.mark.parametrize("given", ["", ","])
def test_an_empty_topic_list_is_an_error(good, tmp_path, capsys, given):
    assert replay.main([str(good["mcap"]), f"--topics={given}", "--rate=100", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "specprune-replay: error:", "--topics names no topic")
    out = tmp_path / "never"
    assert record.main([str(out), f"--topics={given}", "--duration=0.1", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "specprune-record: error:", "--topics names no topic")
    assert not out.exists()


def test_replay_rate_has_a_lower_bound(good, capsys):
    for rate in (1e-300, 0.009):
        with pytest.raises(ValueError, match=r"--rate must be a number >= 0.01"):
            replay.ReplayOptions(bag=good["mcap"], rate=rate)
    replay.ReplayOptions(bag=good["mcap"], rate=replay.MIN_RATE)
    with pytest.raises(SystemExit):
        replay.main(["--help"])
    assert ">= 0.01" in capsys.readouterr().out


def two_types_bag(good: dict[str, Path], path: Path) -> Path:
    """The good bag with a second connection on /instruction that carries std_msgs/Header."""
    with Bag(good["sqlite3"]) as bag:
        ts = bag.typestore
        writer = Writer(path, version=9)
        writer.open()
        conns = {}
        for conn, stamp, raw in bag.messages():
            if conn.topic not in conns:
                conns[conn.topic] = writer.add_connection(conn.topic, conn.msgtype, typestore=ts)
            writer.write(conns[conn.topic], stamp, raw)
        header = writer.add_connection("/instruction", "std_msgs/msg/Header", typestore=ts)
        writer.write(header, bag.start_ns, ts.serialize_cdr(ts.types["std_msgs/msg/Header"](
            stamp=ts.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="x"), "std_msgs/msg/Header"))
        writer.close()
    return path


def test_a_topic_with_two_types_is_refused_only_when_read(good, tmp_path, capsys):
    bag = two_types_bag(good, tmp_path / "two_types")
    out = f"--out={tmp_path / 'r'}"
    assert evaluate.main([str(bag), "--fake-policy", out, "--no-progress", "--no-plots"]) == 2
    one_line_error(capsys.readouterr().err, "'/instruction' is recorded with two types", "std_msgs/msg/Header")
    assert replay.main([str(bag), "--rate=100", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "'/instruction' is recorded with two types")
    # not read: the evaluator with --instruction, the player with --topics leaving it out
    assert evaluate.main([str(bag), "--fake-policy", out, "--no-progress", "--no-plots", "--instruction=pick"]) == 0
    assert replay.main([str(bag), f"--topics={CAMERA_TOPICS['primary']}", "--rate=100", "--no-progress", "--json"]) == 0
    assert f'"{CAMERA_TOPICS["primary"]}": 5' in capsys.readouterr().out
