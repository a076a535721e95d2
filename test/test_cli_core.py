"""specprune-infer / specprune-make-tiny / specprune-bench command-line behaviour."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from specprune_ros.cli import bench, infer, make_tiny
from specprune_ros.cli.common import join_negative_values

PROPRIO = "-0.1,0.2,0,0,0,0,0.03,-0.03"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    paths = {}
    for view, shape in (("primary", (256, 256, 3)), ("wrist", (120, 160, 3))):
        path = d / f"{view}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, shape, dtype=np.uint8))
        paths[view] = str(path)
    return paths


def args_for(ckpt, images, *extra):
    return [f"--checkpoint={ckpt}", "--instruction=put the red cube on the blue plate",
            f"--image=primary={images['primary']}", f"--image=wrist={images['wrist']}", *extra]


def test_join_negative_values():
    assert join_negative_values(["--proprio", "-0.1,0.2", "--flip"]) == ["--proprio=-0.1,0.2", "--flip"]
    assert join_negative_values(["--proprio=-1", "-h"]) == ["--proprio=-1", "-h"]
    assert join_negative_values(["--proprio", "-inf,0"]) == ["--proprio=-inf,0"]  # refused later, and says why


def test_boolean_flags_take_values_as_every_option_does(capsys):
    import argparse

    from specprune_ros.cli.common import ArgumentParser

    p = ArgumentParser(prog="t")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--offset", default=None)
    p.add_argument("rest", nargs="*")
    ns = p.parse_args(["--flip=false", "--json=yes", "--offset", "-0.1,0.2", "--", "--flip=true"])
    assert (ns.flip, ns.json, ns.offset, ns.rest) == (False, True, "-0.1,0.2", ["--flip=true"])
    ns = p.parse_args(["--no-flip=false", "--json=0", "--offset=-1"])
    assert (ns.flip, ns.json, ns.offset) == (True, False, "-1")
    with pytest.raises(SystemExit) as exit_:
        p.parse_args(["--flip=maybe"])
    assert exit_.value.code == 2 and "--flip: expected true or false, got 'maybe'" in capsys.readouterr().err


def test_infer_json(tiny_checkpoint, images, capsys):
    assert infer.main(args_for(tiny_checkpoint, images, "--proprio", PROPRIO, "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.asarray(out["actions"]).shape == (8, 7)
    assert out["stats"]["preset"] == "paper"  # the package default
    assert sum(out["stats"]["kept_per_view"].values()) < 512
    assert out["unnorm_key"] == "tiny_sim"


def test_infer_off_and_text(tiny_checkpoint, images, capsys):
    assert infer.main(args_for(tiny_checkpoint, images, f"--proprio={PROPRIO}", "--preset=off", "--center-crop=false", "--flip=true")) == 0
    text = capsys.readouterr().out
    assert "8 steps x 7 dims" in text and "preset=off" in text and "primary 256" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--checkpoint=/nonexistent"], "checkpoint directory not found"),
        (["--preset=papr"], "did you mean 'paper'"),
        (["--unnorm-key=tiny_sin"], "did you mean 'tiny_sim'"),
        (["--proprio=1,2"], "proprio must have shape"),
        (["--proprio=1,x"], "comma-separated numbers"),
        (["--proprio=-0.1,,0.2,0,0,0,0,0.03,-0.03"], "field 2 is empty"),  # not 8 numbers shifted by one place
        (["--instruction=pick \udcff up"], "not valid UTF-8"),  # a non-UTF-8 command-line byte
        (["--device=mps"], "Metal backend is not available"),
        (["--control-dt=inf"], "control_dt=inf must lie in [0.001, 10]"),
    ],
)
def test_infer_errors(tiny_checkpoint, images, capsys, extra, message):
    args = args_for(tiny_checkpoint, images, f"--proprio={PROPRIO}")
    args = [a for a in args if not any(a.startswith(e.split("=")[0] + "=") for e in extra)] + extra
    code = None
    try:
        code = infer.main(args)
    except SystemExit as exit_:  # argparse type errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_infer_unknown_view(tiny_checkpoint, images, capsys):
    args = args_for(tiny_checkpoint, images, f"--proprio={PROPRIO}") + [f"--image=side={images['primary']}"]
    assert infer.main(args) == 2
    assert "view(s) ['side'] that the policy does not take" in capsys.readouterr().err


def test_infer_missing_view(tiny_checkpoint, images, capsys):
    args = [a for a in args_for(tiny_checkpoint, images, f"--proprio={PROPRIO}") if "wrist" not in a]
    assert infer.main(args) == 2
    assert "lacks camera view(s) ['wrist']" in capsys.readouterr().err


def test_infer_refuses_16_bit_images_a_view_given_twice_and_takes_any_file_name(tiny_checkpoint, images, tmp_path, capsys):
    depth = tmp_path / "depth.png"
    cv2.imwrite(str(depth), np.full((64, 64), 4000, np.uint16))  # a 16-bit depth image: never scaled to 8 bits
    args = [a for a in args_for(tiny_checkpoint, images, f"--proprio={PROPRIO}") if "primary" not in a]
    assert infer.main([*args, f"--image=primary={depth}"]) == 2
    assert "uint16 pixels" in capsys.readouterr().err
    assert infer.main([*args, f"--image=primary={images['primary']}", f"--image=primary={images['wrist']}"]) == 2
    assert "gives view 'primary' twice" in capsys.readouterr().err
    odd = tmp_path / "frame\udcff.png"  # a file name that is not UTF-8 (it crashed OpenCV's imread)
    odd.write_bytes(Path(images["primary"]).read_bytes())
    assert infer.main([*args, f"--image=primary={odd}", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["actions"]) == 8


def test_infer_refuses_a_proprio_state_the_checkpoint_would_ignore(tiny_checkpoint, images, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "no_proprio"
    shutil.copytree(tiny_checkpoint, ckpt)
    for f in ckpt.glob("proprio_projector--*.pt"):
        f.unlink()
    assert infer.main(args_for(ckpt, images, f"--proprio={PROPRIO}")) == 2
    assert "this policy takes none" in capsys.readouterr().err
    assert infer.main(args_for(ckpt, images, "--json")) == 0  # without it, the checkpoint runs


def test_console_script(tiny_checkpoint, images):
    exe = Path(sys.executable).with_name("specprune-infer")
    proc = subprocess.run([str(exe), *args_for(tiny_checkpoint, images, "--proprio", PROPRIO, "--json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["actions"]) == 8
    help_ = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "--unnorm-key" in help_.stdout


def test_make_tiny(tmp_path, capsys):
    assert make_tiny.main([str(tmp_path / "a"), "--seed=3"]) == 0
    assert (tmp_path / "a" / "config.json").is_file()
    assert make_tiny.main([str(tmp_path / "new" / "sub" / "b")]) == 0  # parents are made
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "new" / "sub" / "b").stat().st_mode & 0o777 == 0o777 & ~umask
    assert make_tiny.main([str(tmp_path / "a")]) == 2  # exists: refuse without --force
    assert "--force" in capsys.readouterr().err
    assert make_tiny.main([str(tmp_path / "a"), "--force", "--seed=4"]) == 0  # a checkpoint: replaced


@pytest.mark.parametrize("name, message", [("", "out_dir is empty"), (".", "the current directory"),
                                           ("..", "the current directory or one above it"),
                                           ("../other", "not a checkpoint directory")])
def test_make_tiny_force_never_replaces_a_folder_that_is_not_a_checkpoint(tmp_path, monkeypatch, capsys, name, message):
    for folder in ("work", "other"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "precious.txt").write_text("keep")
    monkeypatch.chdir(tmp_path / "work")
    assert make_tiny.main([name, "--force"]) == 2
    assert message in capsys.readouterr().err
    assert all((tmp_path / folder / "precious.txt").read_text() == "keep" for folder in ("work", "other"))


def test_bench_tiny_json(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--model=tiny", "--steps=3", "--warmup=1", f"--json={out}", "--device=cpu"]) == 0
    r = json.loads(out.read_text())
    for key in ("baseline_ms", "pruned_ms", "speedup", "llm_speedup", "tokens_kept_mean", "flops_ratio_full"):
        assert key in r and r[key] > 0
    assert r["tokens_per_layer"]["off"] == [r["tokens_total"]] * 8
    assert r["tokens_per_layer"]["paper"][-1] < r["tokens_total"]
    assert 0 < r["flops_ratio_full"] < 1 and r["tokens_kept_mean"] < 512
    assert out.with_suffix(".png").is_file() and r["proportional"] is False
    assert bench.main(["--model=tiny", "--steps=2", "--warmup=0", f"--json={out}", "--device=cpu", "--proportional"]) == 0
    assert json.loads(out.read_text())["proportional"] is True
    assert bench.main(["--model=tiny", "--steps=2", "--warmup=0", f"--json={out}", "--device=cpu", "--merge"]) == 0
    merged = json.loads(out.read_text())
    assert merged["merge"] is True and merged["proportional"] is True  # --merge implies --proportional


def test_bench_bare_json_prints_to_stdout(capsys):
    assert bench.main(["--model=tiny", "--steps=1", "--warmup=0", "--device=cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1


@pytest.mark.parametrize("extra, message", [
    (["--threads=0"], "--threads must be >= 1"),
    (["--json=."], "--json=.: not a writable file path"),
    (["--json=/no/such/folder/b.json"], "not a writable file path"),
    (["--device=mps"], "Metal backend is not available"),
    (["--plot=tokens.xyz"], "--plot=tokens.xyz: name a .png, .svg, .pdf file"),
    (["--plot=-"], "--plot=-: name a .png"),
])
def test_bench_refuses_bad_options_before_running(capsys, extra, message):
    assert bench.main(["--model=tiny", "--steps=1", "--warmup=0", *extra]) == 2
    out = capsys.readouterr()
    assert message in out.err and "model ready" not in out.out + out.err  # refused before building anything


def test_demo_policy_stage(tmp_path, capsys, monkeypatch):
    from specprune_ros.cli import demo

    monkeypatch.setattr(demo, "TESTBED_CHECKPOINT", tmp_path / "absent")  # force the generated tiny default
    assert demo.main([f"--out={tmp_path / 'out'}", "--skip-ros", "--episodes=0"]) == 0
    out = capsys.readouterr().out
    assert "[off] 8x7 actions" in out and "[paper] 8x7 actions" in out and "median latency" in out
    assert (tmp_path / "out" / "tiny-checkpoint" / "config.json").is_file()


def test_demo_stages_show_the_chosen_preset(tmp_path, capsys, monkeypatch):
    from specprune_ros.bags import demo as bag_demo
    from specprune_ros.cli import demo

    monkeypatch.setattr(demo, "TESTBED_CHECKPOINT", tmp_path / "absent")
    replayed = []
    monkeypatch.setattr(bag_demo, "replay_into_node", lambda ckpt, out, preset: replayed.append(preset))
    assert demo.main([f"--out={tmp_path / 'out'}", "--preset=aggressive", "--episodes=0", "--ros-episodes=0"]) == 0
    assert "[aggressive] 8x7 actions" in capsys.readouterr().out
    assert replayed == ["aggressive"]  # the bag stage too


def test_demo_refuses_unknown_presets_before_doing_anything(tmp_path, capsys):
    from specprune_ros.cli import demo

    with pytest.raises(SystemExit) as exc:
        demo.main_args([f"--out={tmp_path / 'out'}", "--episodes=-1"])
    assert exc.value.code == 2 and "--episodes=-1 must lie in [0, 10000]" in capsys.readouterr().err

    for flag in ("--preset", "--ros-preset"):
        with pytest.raises(SystemExit) as exc:
            demo.main_args([f"--out={tmp_path / 'out'}", f"{flag}=papr"])
        assert exc.value.code == 2
        assert f"{flag}='papr' is not a preset (did you mean 'paper'?)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
