"""The committed params files load through rcl's own parser and the node's checker, with the right types."""
from __future__ import annotations

from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context

from ros_env import messages  # noqa: F401  (generated messages, private ROS domain)

from specprune_ros.ros.parameters import (
    NodeConfigError,
    check_params_file,
    configs_from_values,
    parameter_specs,
    read_params_file,
)

REPO = Path(__file__).resolve().parents[1]
FILES = ["config/libero.yaml", "config/policy.yaml"]
PY_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def _rcl_values(path: Path) -> dict:
    """Parameter values of a PolicyNode started with ``--ros-args --params-file path`` (parsed by rcl)."""
    from specprune_ros.ros.policy_node import PolicyNode

    context = Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(path)])  # rcl parses the file here
    try:
        node = PolicyNode(context=context)
        try:
            return {s.name: node.get_parameter(s.name).value for s in parameter_specs()}
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.parametrize("name", FILES)
def test_params_file_parses_in_rcl_with_the_declared_types(name):
    path = REPO / name
    rcl = _rcl_values(path)
    in_file = read_params_file(path)
    for spec in parameter_specs():
        if spec.name not in in_file:
            continue
        value = rcl[spec.name]
        if spec.kind.endswith("_list"):
            item = PY_TYPES[spec.kind[: -len("_list")]]
            assert all(type(v) is item or (item is float and type(v) is int) for v in value), (name, spec.name, value)
        elif spec.kind == "float":
            assert type(value) in (float, int), (name, spec.name, value)
        else:
            assert type(value) is PY_TYPES[spec.kind], (name, spec.name, value)
        assert value == (list(in_file[spec.name]) if isinstance(value, list) else in_file[spec.name]), spec.name
    cfg, policy_kw = configs_from_values({k: v for k, v in rcl.items() if v is not None})
    assert all(isinstance(a, str) for a in cfg.action_names) and len(cfg.action_names) == 7
    check_params_file(path)


def test_libero_preset_round_trips_jpeg_and_quotes_action_names():
    cfg, policy_kw = check_params_file(REPO / "config/libero.yaml")
    assert policy_kw["jpeg_roundtrip"] is True and policy_kw["flip"] is True
    assert cfg.action_names == ("x", "y", "z", "roll", "pitch", "yaw", "gripper")


def test_checker_reads_bare_y_as_rcl_does(tmp_path):
    text = (REPO / "config/libero.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace('["x", "y", "z",', "[x, y, z,"))
    assert bad.read_text() != text
    with pytest.raises(NodeConfigError, match=r"action_names=.*True.*quote it"):
        check_params_file(bad)
    with pytest.raises(Exception, match="params file"):  # rcl itself refuses the mixed-type list
        _rcl_values(bad)
