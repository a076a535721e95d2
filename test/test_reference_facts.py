"""Facts established by running the public OpenVLA-OFT implementation beside this package (docs/reference-check.md).

No reference code is used here: each test re-derives one documented behaviour of the original inference path
with stock transformers and checks that the package agrees with it.
"""
from __future__ import annotations

import pytest
import torch
from conftest import make_observation

from specprune_ros.core.checkpoint import inspect_checkpoint, load_model
from specprune_ros.core.config import PolicyConfig
from specprune_ros.core.policy import build_policy, normalize_proprio
from specprune_ros.core.preprocess import normalize, policy_frame
from specprune_ros.core.prompt import SPACE_TOKEN_ID, PromptTokenizer

N_VIEWS = 2
PATCHES = 256
STOP_ID = 2
PLACEHOLDER_ID = 1  # the original fills the action slots with id 1, then zeroes their embeddings


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return inspect_checkpoint(tiny_checkpoint)


def _reference_style_actions(model, pixels: torch.Tensor, proprio: torch.Tensor, prompt_ids: list[int]) -> torch.Tensor:
    """Normalized actions (T, A) built the way the original predict_action builds its input and readout.

    - ids = prompt (with BOS, ending in 29871) + T*A placeholder ids + stop id;
    - embeddings of the placeholder slots are multiplied by 0 (an action mask), the stop token keeps its embedding;
    - patch embeddings (both views) + the proprio token are inserted right after BOS;
    - the whole Llama model runs with a full (all-zero additive) 4-D mask, i.e. bidirectionally;
    - readout = final normed hidden states at [NUM_PATCHES + NUM_PROMPT_TOKENS, ... + T*A), counted from the START,
      with NUM_PATCHES = 2*256 + 1 (proprio) and NUM_PROMPT_TOKENS = len(prompt ids) - 1.
    """
    T, A = model.spec.chunk_len, model.spec.action_dim
    ids = torch.tensor([prompt_ids + [PLACEHOLDER_ID] * (T * A) + [STOP_ID]])  # (1, 1+P+T*A+1)
    is_action = torch.zeros(ids.shape, dtype=torch.bool)
    is_action[:, len(prompt_ids) : len(prompt_ids) + T * A] = True
    llm = model.language_model.model
    text = llm.embed_tokens(ids) * ~is_action[..., None]  # (1, 1+P+T*A+1, D)
    patches = model.projector(model.vision_backbone(pixels))  # (1, 512, D)
    extra = torch.cat([patches, model.proprio_projector(proprio)[:, None]], dim=1)  # (1, 513, D)
    seq = torch.cat([text[:, :1], extra, text[:, 1:]], dim=1)  # (1, L, D)
    L = seq.shape[1]
    saved = llm.config._attn_implementation
    try:
        llm.config._attn_implementation = "eager"
        hidden = llm(inputs_embeds=seq, attention_mask=torch.zeros(1, 1, L, L), position_ids=torch.arange(L)[None]).last_hidden_state
    finally:
        llm.config._attn_implementation = saved
    num_patches = N_VIEWS * PATCHES + 1
    num_prompt = len(prompt_ids) - 1
    readout = hidden[:, num_patches + num_prompt : num_patches + num_prompt + T * A]  # (1, T*A, D)
    return model.action_head(readout)[0]  # (T, A)


@pytest.mark.parametrize("instruction", ["open the drawer", "Put the red cube on the blue plate, then close the top drawer"])
def test_reference_style_input_and_readout_match_the_policy(ckpt, instruction):
    policy = build_policy(PolicyConfig(checkpoint=str(ckpt.path), preset="off"))
    obs = make_observation(seed=11, instruction=instruction)
    frames = [policy_frame(obs.images[v], policy.config.preprocess) for v in policy.views]
    pixels = normalize(frames)
    proprio = torch.tensor(normalize_proprio(obs.proprio, policy.proprio_stats), dtype=torch.float32)[None]
    ids, _ = policy.tokenizer.encode(instruction)
    with torch.no_grad():
        expected = _reference_style_actions(policy.model, pixels, proprio, ids)
        ours = policy.model(pixels, proprio, torch.tensor([ids]))[0]
    assert ours.shape == (policy.chunk_len, policy.action_dim)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_space_token_appended_once(ckpt):
    tok = PromptTokenizer(ckpt.tokenizer_file)
    ids, _ = tok.encode("open the drawer")
    assert ids[0] == tok.bos_id and ids[-1] == SPACE_TOKEN_ID and ids[-2] != SPACE_TOKEN_ID
    # Same instruction in other case: the original lowercases the task before formatting the prompt.
    assert tok.encode("OPEN THE DRAWER")[0] == ids


def test_bfloat16_load_keeps_rope_frequencies_in_float32(ckpt):
    """The original loads with from_pretrained(torch_dtype=bfloat16), which leaves RoPE inverse frequencies in
    float32; casting them to bfloat16 moved a tiny model's actions by ~4e-3 in the cross-check."""
    model = load_model(ckpt, dtype=torch.bfloat16)
    rope = model.language_model.model.rotary_emb
    assert model.language_model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert rope.inv_freq.dtype == torch.float32
    cfg = model.language_model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    theta = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    expected = 1.0 / (float(theta) ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    torch.testing.assert_close(rope.inv_freq, expected, rtol=0, atol=0)
