"""Checkpoint loading: every failure mode names the file/keys; a good checkpoint loads strictly."""
from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from specprune_ros.core.checkpoint import CheckpointError, inspect_checkpoint, load_model
from specprune_ros.core.config import ConfigError, PolicyConfig
from specprune_ros.core.policy import build_policy


def _shard(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    name = sorted(set(index["weight_map"].values()))[0]
    return path / name


def test_good_checkpoint_loads(tiny_checkpoint):
    ckpt = inspect_checkpoint(tiny_checkpoint)
    assert ckpt.spec.action_dim == 7 and ckpt.spec.proprio_dim == 8 and ckpt.spec.chunk_len == 8
    model = load_model(ckpt)
    assert not any(p.is_meta for p in model.parameters())
    # LayerScale is stored as scale_factor in the checkpoint and loaded into timm's gamma
    shard_keys = set()
    for f in ckpt.weight_files:
        shard_keys |= set(load_file(str(f)))
    assert any(k.endswith("ls1.scale_factor") for k in shard_keys)
    assert not any(k.endswith("ls1.gamma") for k in shard_keys)


@pytest.mark.parametrize("name", ["config.json", "dataset_statistics.json", "tokenizer.json"])
def test_missing_file_is_named(tiny_checkpoint_copy, name):
    (tiny_checkpoint_copy / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        inspect_checkpoint(tiny_checkpoint_copy)


def test_missing_shard_and_head(tiny_checkpoint_copy):
    shard = _shard(tiny_checkpoint_copy)
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        inspect_checkpoint(tiny_checkpoint_copy)


def test_missing_action_head(tiny_checkpoint_copy):
    next(tiny_checkpoint_copy.glob("action_head--*")).unlink()
    with pytest.raises(CheckpointError, match="action_head--"):
        inspect_checkpoint(tiny_checkpoint_copy)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        inspect_checkpoint(tmp_path / "nope")


def test_missing_and_unexpected_keys(tiny_checkpoint_copy):
    shard = _shard(tiny_checkpoint_copy)
    tensors = load_file(str(shard))
    victim = sorted(tensors)[0]
    tensors[victim + "_typo"] = tensors.pop(victim)
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError) as err:
        load_model(inspect_checkpoint(tiny_checkpoint_copy))
    msg = str(err.value)
    assert "missing" in msg and victim in msg
    assert "unexpected" in msg and f"did you mean {victim!r}" in msg


def test_shape_mismatch(tiny_checkpoint_copy):
    shard = _shard(tiny_checkpoint_copy)
    tensors = load_file(str(shard))
    victim = next(k for k, v in sorted(tensors.items()) if v.ndim == 2)
    tensors[victim] = torch.zeros(tensors[victim].shape[0] + 1, tensors[victim].shape[1])
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match="shape mismatch.*" + victim.replace(".", r"\.")):
        load_model(inspect_checkpoint(tiny_checkpoint_copy))


def test_head_key_problems(tiny_checkpoint_copy):
    head = next(tiny_checkpoint_copy.glob("action_head--*"))
    state = torch.load(head, weights_only=True)
    state["module.model.extra.weight"] = torch.zeros(1)
    torch.save(state, head)
    with pytest.raises(CheckpointError, match="action_head.*unexpected.*extra"):
        load_model(inspect_checkpoint(tiny_checkpoint_copy))


def test_corrupt_shard(tiny_checkpoint_copy):
    shard = _shard(tiny_checkpoint_copy)
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(inspect_checkpoint(tiny_checkpoint_copy))


def test_unknown_unnorm_key_names_closest(tiny_checkpoint):
    ckpt = inspect_checkpoint(tiny_checkpoint)
    assert ckpt.resolve_unnorm_key(None) == "tiny_sim"
    with pytest.raises(CheckpointError, match="did you mean 'tiny_sim'"):
        ckpt.resolve_unnorm_key("tiny_sin")
    with pytest.raises(CheckpointError, match="unnorm_key"):
        build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), unnorm_key="libero_spatial_no_noops"))


def test_statistics_file_overrides_config_norm_stats(tiny_checkpoint_copy):
    cfg = json.loads((tiny_checkpoint_copy / "config.json").read_text())
    cfg["norm_stats"] = {"bridge_orig": {"action": {"q01": [0] * 7, "q99": [1] * 7}}}
    (tiny_checkpoint_copy / "config.json").write_text(json.dumps(cfg))
    ckpt = inspect_checkpoint(tiny_checkpoint_copy)
    assert sorted(ckpt.stats) == ["bridge_orig", "tiny_sim"]
    with pytest.raises(CheckpointError, match="several unnorm keys"):
        ckpt.resolve_unnorm_key(None)


def test_config_validation_messages():
    with pytest.raises(ConfigError, match="did you mean 'paper'"):
        PolicyConfig(checkpoint="x", preset="papr")
    with pytest.raises(ConfigError, match="bfloat16"):
        PolicyConfig(checkpoint="x", dtype="bf16")
    with pytest.raises(ConfigError, match="crop_scale"):
        PolicyConfig(checkpoint="x", crop_scale=0.01)
    with pytest.raises(ConfigError, match="unknown policy config key.*did you mean 'unnorm_key'"):
        PolicyConfig.from_mapping({"checkpoint": "x", "unorm_key": "a"})


@pytest.mark.parametrize("key, value, message", [
    ("flip", "false", "flip='false' must be true or false"),  # a quoted YAML value: truthy text, a rotated image
    ("center_crop", 1, "center_crop=1 must be true or false"),
    ("crop_scale", "0.9", "crop_scale='0.9' must be a number"),
    ("views", "wrist", "views='wrist' must be a list of names"),  # not ('w', 'r', 'i', 's', 't')
    ("seed", 1.5, "seed=1.5 must be an integer"),
    ("checkpoint", 5, "checkpoint=5 must be text"),
])
def test_mapped_values_of_the_wrong_type_are_named(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        PolicyConfig.from_mapping({"checkpoint": "x", key: value})
    cfg = PolicyConfig.from_mapping({"checkpoint": "x", "views": ["wrist"], "crop_scale": 1, "flip": True})
    assert cfg.views == ("wrist",) and cfg.crop_scale == 1.0 and cfg.flip is True


def test_loading_never_uses_pickle_without_weights_only(tiny_checkpoint_copy):
    """A head file with a pickled object that is not a tensor is refused (weights_only=True)."""
    head = next(tiny_checkpoint_copy.glob("action_head--*"))
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    head.write_bytes(pickle.dumps({"module.model.fc2.weight": Evil()}))
    with pytest.raises(CheckpointError, match="cannot read"):
        inspect_checkpoint(tiny_checkpoint_copy)


def test_non_libero_action_dim_needs_explicit_chunk(tiny_checkpoint_copy):
    """A 14-D head (ALOHA-like) must not silently run with LIBERO's chunk length and bounds."""
    head = next(tiny_checkpoint_copy.glob("action_head--*"))
    state = torch.load(head, weights_only=True)
    state["module.model.fc2.weight"] = torch.zeros(14, state["module.model.fc2.weight"].shape[1])
    torch.save(state, head)
    with pytest.raises(CheckpointError, match="num_actions_chunk"):
        inspect_checkpoint(tiny_checkpoint_copy)


def test_min_max_normalization_is_selectable(tiny_checkpoint_copy):
    cfg = json.loads((tiny_checkpoint_copy / "config.json").read_text())
    cfg["action_normalization"] = "bounds"
    (tiny_checkpoint_copy / "config.json").write_text(json.dumps(cfg))
    assert inspect_checkpoint(tiny_checkpoint_copy).spec.action_normalization == "bounds"
    cfg["action_normalization"] = "zscore"
    (tiny_checkpoint_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="action_normalization"):
        inspect_checkpoint(tiny_checkpoint_copy)


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, message", [
    (lambda a: a.pop("q99"), "lacks 'q01'/'q99'"),
    (lambda a: a.__setitem__("q01", a["q01"][:3]), "q01 must be a list of 7 finite numbers"),
    (lambda a: a.__setitem__("q01", [float("nan")] * 7), "q01 must be a list of 7 finite numbers"),
    (lambda a: a.__setitem__("q01", [v + 10 for v in a["q99"]]), "q01 exceeds q99 in dimension(s) [0, 1"),
    (lambda a: a.__setitem__("mask", ["false"] * 7), "mask must be a list of 7 true/false values"),
])
def test_bad_statistics_are_refused_before_the_weights_load(tiny_checkpoint_copy, edit, message):
    _edit_json(tiny_checkpoint_copy / "dataset_statistics.json", lambda d: edit(d["tiny_sim"]["action"]))
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint_copy)))
    assert "dataset_statistics.json: tiny_sim.action" in str(info.value)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["text_config"].__setitem__("hidden_size", "64"), "hidden_size='64' must be a positive integer"),
    (lambda c: c.__setitem__("text_config", None), "text_config must be an object"),
    (lambda c: c.__setitem__("num_actions_chunk", 0), "num_actions_chunk=0 must be a positive integer"),
    (lambda c: c.__setitem__("timm_overrides", "big"), "timm_overrides must be a list of objects"),
    (lambda c: c.__setitem__("use_fused_vision_backbone", "false"), "use_fused_vision_backbone='false' must be true"),
])
def test_bad_config_values_are_named(tiny_checkpoint_copy, edit, message):
    _edit_json(tiny_checkpoint_copy / "config.json", edit)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        inspect_checkpoint(tiny_checkpoint_copy)


def test_a_config_the_libraries_reject_is_a_checkpoint_error(tiny_checkpoint_copy):
    _edit_json(tiny_checkpoint_copy / "config.json", lambda c: c["timm_model_ids"].__setitem__(0, "no_such_vit"))
    with pytest.raises(CheckpointError, match="config.json: cannot build the model it describes"):
        load_model(inspect_checkpoint(tiny_checkpoint_copy))
    (tiny_checkpoint_copy / "config.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        inspect_checkpoint(tiny_checkpoint_copy)


def test_damaged_tokenizer_is_named(tiny_checkpoint_copy):
    (tiny_checkpoint_copy / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(CheckpointError, match="tokenizer.json: cannot load the tokenizer"):
        build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint_copy)))


def test_bad_head_tensors_and_mixed_steps(tiny_checkpoint_copy):
    head = next(tiny_checkpoint_copy.glob("action_head--*"))
    good = torch.load(head, weights_only=True)
    torch.save({**good, "module.model.fc2.weight": torch.zeros(7)}, head)
    with pytest.raises(CheckpointError, match="fc2.weight has shape"):
        inspect_checkpoint(tiny_checkpoint_copy)
    torch.save({**good, "module.model.fc2.bias": torch.zeros(7, dtype=torch.int64)}, head)
    with pytest.raises(CheckpointError, match="not floating-point tensors"):
        inspect_checkpoint(tiny_checkpoint_copy)
    torch.save(good, head)
    head.rename(head.with_name("action_head--5000_checkpoint.pt"))
    with pytest.raises(CheckpointError, match="different training steps"):
        inspect_checkpoint(tiny_checkpoint_copy)


def test_a_weight_stored_twice_is_refused(tiny_checkpoint_copy):
    index_file = tiny_checkpoint_copy / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
    first, second = (tiny_checkpoint_copy / n for n in shards[:2])
    extra = load_file(str(first))
    key = next(iter(extra))
    save_file({**load_file(str(second)), key: extra[key] + 1}, str(second))
    with pytest.raises(CheckpointError, match=re.escape(f"{key!r} is stored twice")):
        load_model(inspect_checkpoint(tiny_checkpoint_copy))


def test_nan_weights_never_give_actions(tiny_checkpoint_copy):
    from conftest import make_observation

    head = next(tiny_checkpoint_copy.glob("action_head--*"))
    state = torch.load(head, weights_only=True)
    state["module.model.fc2.weight"][0, 0] = float("nan")
    torch.save(state, head)
    policy = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint_copy), preset="off"))
    with pytest.raises(FloatingPointError, match="NaN or inf actions"):
        policy.infer(make_observation())


def test_single_file_and_index_together_are_refused(tiny_checkpoint_copy):
    save_file({"x": torch.zeros(1)}, str(tiny_checkpoint_copy / "model.safetensors"))
    with pytest.raises(CheckpointError, match="both model.safetensors and model.safetensors.index.json exist"):
        inspect_checkpoint(tiny_checkpoint_copy)
