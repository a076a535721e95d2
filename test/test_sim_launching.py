"""Wiring of the LIBERO closed loop (specprune_ros.sim.launching): pure, no ROS, no simulator."""
from __future__ import annotations

import pytest

from specprune_ros.ros.parameters import NODE_NAME, configs_from_values, read_params_file
from specprune_ros.sim import launching as L
from specprune_ros.sim.protocol import ProtocolError

LIBERO_YAML = L.REPO_ROOT / L.LIBERO_PARAMS


def test_libero_preset_binds_the_policy_node_to_the_bridge():
    values = read_params_file(LIBERO_YAML, NODE_NAME)
    for name, want in L.sim_bindings().items():
        got = values.get(name)
        got = list(got) if isinstance(got, (list, tuple)) else got
        assert got == want, f"config/libero.yaml: {name} is {got!r}, the LIBERO bridge needs {want!r}"


@pytest.mark.parametrize("suite,key", [("libero_spatial", "libero_spatial_no_noops"), ("libero_10", "libero_10_no_noops")])
def test_run_parameters_are_valid_node_parameters(suite, key):
    values = read_params_file(LIBERO_YAML, NODE_NAME)
    values.update(L.policy_parameters(L.SimLaunchArgs(suite=suite, checkpoint="/models/oft", preset="off")))
    node_cfg, policy_kw = configs_from_values(values)  # unknown names or bad values raise
    assert policy_kw["unnorm_key"] == key and policy_kw["preset"] == "off" and policy_kw["flip"] is True
    assert node_cfg.dry_run and values["use_sim_time"] is True


def test_weighting_options_are_node_parameters():
    values = read_params_file(LIBERO_YAML, NODE_NAME)
    values.update(L.policy_parameters(L.SimLaunchArgs(checkpoint="/models/oft", proportional=True, merge=True)))
    _, policy_kw = configs_from_values(values)
    assert (policy_kw["preset"], policy_kw["proportional"], policy_kw["merge"]) == ("paper", True, True)
    with pytest.raises(ProtocolError, match="merge:=true needs proportional:=true"):
        L.SimLaunchArgs(fake_policy=True, merge=True)


def test_explicit_unnorm_key_wins():
    args = L.SimLaunchArgs(checkpoint="/c", unnorm_key="tiny_sim")
    assert L.policy_parameters(args)["unnorm_key"] == "tiny_sim"


def test_launch_args_are_validated():
    with pytest.raises(ProtocolError, match="checkpoint:=.*fake_policy:=true"):
        L.SimLaunchArgs()
    with pytest.raises(ProtocolError, match="did you mean 'libero_goal'"):
        L.SimLaunchArgs(suite="libero_gaol", fake_policy=True)
    with pytest.raises(ProtocolError, match="task_id=-1"):
        L.SimLaunchArgs(task_id=-1, fake_policy=True)
    assert set(L.ARG_DOC) == set(L.SimLaunchArgs.__dataclass_fields__)


def test_bridge_command_runs_the_node_in_the_sim_venv(tmp_path):
    python = tmp_path / "venv" / "bin" / "python"
    args = L.SimLaunchArgs(suite="libero_goal", task_id=3, init_state=7, fake_policy=True, max_steps=5)
    cmd = L.bridge_command(args, str(python), env_script="/repo/tools/ros_env.sh")
    assert cmd[: cmd.index("bash")] == [
        "env", "-u", "PYTHONPATH", "-u", "LD_LIBRARY_PATH", "-u", "SPECPRUNE_ROS_ISOLATE", f"VENV={tmp_path / 'venv'}"
    ]
    i = cmd.index(str(python))
    assert cmd[i + 1 : i + 3] == ["-m", "specprune_ros.sim.libero_node"]
    assert f"action_chunk:={L.POLICY_CHUNK_TOPIC}" in cmd
    params = [cmd[j + 1] for j, a in enumerate(cmd) if a == "-p"]
    assert {"suite:='libero_goal'", "task_id:=3", "init_state:=7", "max_steps:=5", "auto_reset:=false"} <= set(params)
    direct = L.bridge_command(args, str(python), env_script="")
    assert direct[0] == str(python)


def test_policy_params_layer_the_run_over_the_preset(tmp_path):
    args = L.SimLaunchArgs(suite="libero_object", checkpoint="/models/oft", preset="off")
    path = L.write_policy_params(tmp_path / "run.yaml", args)
    values = read_params_file(path, NODE_NAME)
    preset = read_params_file(LIBERO_YAML, NODE_NAME)
    assert values == {**preset, **L.policy_parameters(args)}
    assert values["unnorm_key"] == "libero_object_no_noops" and values["flip"] is True
    # every string is quoted: rcl reads a bare `y` (an action name) as a boolean
    text = path.read_text()
    assert '"y"' in text and "- y\n" not in text
    cmd = L.policy_command(path, python="/venv/bin/python")
    assert cmd[:3] == ["/venv/bin/python", "-m", "specprune_ros.ros.policy_node"]
    assert [cmd[j + 1] for j, a in enumerate(cmd) if a == "--params-file"] == [str(path)]
    alone = read_params_file(L.write_policy_params(tmp_path / "b.yaml", args, tmp_path / "none.yaml"), NODE_NAME)
    assert alone == L.policy_parameters(args)


def test_default_sim_python_follows_the_sim_venv(tmp_path, monkeypatch):
    monkeypatch.delenv("SPECPRUNE_SIM_PYTHON", raising=False)
    monkeypatch.delenv("SPECPRUNE_SIM_VENV", raising=False)
    assert L.default_sim_python() == str(L.REPO_ROOT / ".venv-sim" / "bin" / "python")
    monkeypatch.setenv("SPECPRUNE_SIM_VENV", str(tmp_path / "moved"))  # the venv moved: every tool follows it
    assert L.default_sim_python() == str(tmp_path / "moved" / "bin" / "python")
    monkeypatch.setenv("SPECPRUNE_SIM_PYTHON", "/opt/ros/python3")  # an explicit interpreter wins
    assert L.default_sim_python() == "/opt/ros/python3"
