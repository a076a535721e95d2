"""The forward pass: layout, bidirectional layer loop == whole-model forward, readout, (un)normalization."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_observation

from specprune_ros.core.checkpoint import inspect_checkpoint, load_model
from specprune_ros.core.config import PolicyConfig
from specprune_ros.core.policy import build_policy, libero_gripper, normalize_proprio, unnormalize_actions
from specprune_ros.core.preprocess import normalize, policy_frame
from specprune_ros.core.prompt import SPACE_TOKEN_ID, PromptTokenizer, build_prompt


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(inspect_checkpoint(tiny_checkpoint))


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint):
    obs = make_observation(seed=3)
    cfg = PolicyConfig(checkpoint=str(tiny_checkpoint)).preprocess
    pixels = normalize([policy_frame(obs.images[v], cfg) for v in ("primary", "wrist")])
    ids, _ = PromptTokenizer(inspect_checkpoint(tiny_checkpoint).tokenizer_file).encode(obs.instruction)
    return pixels, torch.tensor(np.clip(obs.proprio, -1, 1), dtype=torch.float32)[None], torch.tensor([ids])


def test_prompt_and_layout(tiny_checkpoint, model):
    tok = PromptTokenizer(inspect_checkpoint(tiny_checkpoint).tokenizer_file)
    ids, prefix = tok.encode("Pick Up the Cup")
    assert build_prompt("Pick Up the Cup") == "In: What action should the robot take to pick up the cup?\nOut:"
    assert ids[0] == tok.bos_id == 1
    assert ids[-1] == SPACE_TOKEN_ID  # appended because the prompt ends with ':'
    P = len(ids) - 1
    layout = model.layout(2, P)
    assert layout.length == P + 571
    assert layout.prompt_start == 514 and layout.action_start == 514 + P
    start, stop = layout.readout_from_end
    # readout = OFT's [513 + P, 513 + P + 56): the last prompt token and placeholders 0..54
    assert (layout.length + start, layout.length + stop) == (513 + P, 513 + P + 56)
    assert 0 < prefix < P


def test_sequence_assembly(model, inputs):
    pixels, proprio, ids = inputs
    with torch.no_grad():
        patches = model.embed_vision(pixels)
        seq = model.assemble(patches, proprio, ids)
    P = ids.shape[1] - 1
    assert patches.shape == (1, 512, 64)
    assert seq.shape == (1, P + 571, 64)
    emb = model.llm.embed_tokens
    torch.testing.assert_close(seq[:, 0], emb(ids[:, 0]))
    torch.testing.assert_close(seq[:, 1:513], patches)
    torch.testing.assert_close(seq[:, 513], model.proprio_projector(proprio))
    torch.testing.assert_close(seq[:, 514 : 514 + P], emb(ids[:, 1:]))
    assert torch.count_nonzero(seq[:, 514 + P : 514 + P + 56]) == 0
    torch.testing.assert_close(seq[:, -1], emb(torch.tensor([2])))


def test_vision_features_are_second_to_last_block(model, inputs):
    pixels, _, _ = inputs
    tower = model.vision_backbone.featurizer
    x = pixels[:, :3]
    with torch.no_grad():
        feats = model.vision_backbone._features(tower, x)
        h = tower.norm_pre(tower._pos_embed(tower.patch_embed(x)))
        for blk in tower.blocks[:-1]:
            h = blk(h)
    torch.testing.assert_close(feats, h[:, tower.num_prefix_tokens :])


def test_layer_loop_equals_whole_model_forward(model, inputs):
    """Our loop (fused SDPA, is_causal=False) == stock LlamaModel with a full bidirectional 4-D mask (eager)."""
    pixels, proprio, ids = inputs
    with torch.no_grad():
        seq = model.assemble(model.embed_vision(pixels), proprio, ids)
        L = seq.shape[1]
        pos = torch.arange(L)[None]
        taps = {1: None}
        ours, _, lengths = model.run_layers(seq, pos, taps=taps)
        llm = model.language_model.model
        saved = llm.config._attn_implementation
        try:
            llm.config._attn_implementation = "eager"
            mask = torch.zeros(1, 1, L, L)  # additive: nothing masked
            out = llm(inputs_embeds=seq, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        finally:
            llm.config._attn_implementation = saved
    assert lengths == [L] * model.n_layers
    torch.testing.assert_close(ours, out.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(taps[1], out.hidden_states[2], rtol=1e-5, atol=1e-5)  # [0] is the input


def test_attention_is_bidirectional(model, inputs):
    """Changing the LAST token (stop) changes the readout, which sits before it."""
    pixels, proprio, ids = inputs
    with torch.no_grad():
        seq = model.assemble(model.embed_vision(pixels), proprio, ids)
        pos = torch.arange(seq.shape[1])[None]
        a, _, _ = model.run_layers(seq, pos)
        seq2 = seq.clone()
        seq2[:, -1] += 1.0
        b, _, _ = model.run_layers(seq2, pos)
    layout = model.layout(2, ids.shape[1] - 1)
    assert not torch.allclose(model.readout(a, layout), model.readout(b, layout))


def test_forward_matches_policy(tiny_checkpoint, model, inputs):
    """OFTModel.forward (used by training) and the policy's timed path give the same actions."""
    obs = make_observation(seed=3)
    policy = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="off"))
    chunk = policy.infer(obs)
    pixels, _, ids = inputs
    proprio = torch.tensor(normalize_proprio(obs.proprio, policy.proprio_stats), dtype=torch.float32)[None]
    with torch.no_grad():
        norm = model(pixels, proprio, ids)
    expected = unnormalize_actions(norm.numpy().squeeze(0), policy.action_stats)
    np.testing.assert_allclose(chunk.actions, expected, rtol=1e-5, atol=1e-6)
    assert chunk.actions.shape == (8, 7)
    assert chunk.stats.tokens_per_layer == [ids.shape[1] - 1 + 571] * 8


def test_unnormalization_and_proprio_normalization():
    stats = {"q01": [-2.0, 0.0, 0.0], "q99": [2.0, 1.0, 1.0], "mask": [True, True, False]}
    out = unnormalize_actions(np.array([[-1.0, 1.0, 0.3], [0.0, 0.0, -5.0]]), stats)
    np.testing.assert_allclose(out, [[-2.0, 1.0, 0.3], [0.0, 0.5, -5.0]], atol=1e-6)
    p = normalize_proprio(np.array([0.0, 2.0, 0.5]), {"q01": [-1, 0, 0], "q99": [1, 1, 1]})
    np.testing.assert_allclose(p, [0.0, 1.0, 0.0], atol=1e-6)  # 2.0 clipped to 1


def test_libero_gripper():
    a = np.zeros((3, 7))
    a[:, -1] = [0.9, 0.1, 0.6]
    np.testing.assert_array_equal(libero_gripper(a)[:, -1], [-1.0, 1.0, -1.0])
    np.testing.assert_array_equal(libero_gripper(a)[:, :-1], a[:, :-1])


def test_policy_gripper_option(tiny_checkpoint, observation):
    base = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="off")).infer(observation)
    lib = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="off", libero_gripper=True)).infer(observation)
    np.testing.assert_allclose(lib.actions[:, :-1], base.actions[:, :-1])
    np.testing.assert_array_equal(lib.actions[:, -1], -np.sign(2 * base.actions[:, -1] - 1))


def test_min_max_bounds():
    stats = {"q01": [-1.0], "q99": [1.0], "min": [-2.0], "max": [2.0], "mask": [True]}
    np.testing.assert_allclose(unnormalize_actions(np.array([[1.0]]), stats, "bounds"), [[2.0]], atol=1e-6)
    np.testing.assert_allclose(normalize_proprio(np.array([1.0]), stats, "bounds"), [0.5], atol=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"instruction": 5}, "the instruction must be text, got int"),
    ({"instruction": b"pick up the cube"}, "the instruction must be text, got bytes"),
    ({"proprio": np.full(8, 1 + 2j)}, "proprio must hold real numbers"),
    ({"proprio": np.array(["a"] * 8)}, "proprio must hold real numbers"),
    ({"ee_speed": 0.1}, "ee_speed must be (linear m/s, angular rad/s)"),
    ({"ee_speed": ("a", "b")}, "ee_speed must hold real numbers"),
    ({"executed_actions": np.zeros(7)}, "executed_actions must have shape (N, 7)"),
    ({"executed_actions": np.zeros((3, 40))}, "executed_actions must have shape (N, 7), got (3, 40)"),
    ({"instruction": "pick \udcff up"}, "the instruction is not valid UTF-8 text"),
    ({"executed_actions": np.array([[None] * 7], dtype=object)}, "executed_actions must hold real numbers"),
    ({"instruction": "pick " * 3000}, "prompt tokens; this checkpoint takes at most 2048"),
])
def test_observations_of_the_wrong_kind_are_refused(tiny_checkpoint, observation, change, message):
    import dataclasses
    import re

    from specprune_ros.core.types import InputError

    policy = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="off"))
    with pytest.raises(InputError, match=re.escape(message)):
        policy.infer(dataclasses.replace(observation, **change))
