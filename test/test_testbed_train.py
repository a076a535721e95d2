"""specprune-train on a tiny configuration: tokenizer, loss decreases, checkpoint round trip, resume, CLI."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from specprune_ros.core.checkpoint import inspect_checkpoint, load_model
from specprune_ros.core.config import PolicyConfig
from specprune_ros.core.policy import build_policy, normalize_proprio, unnormalize_actions
from specprune_ros.core.preprocess import normalize, policy_frame
from specprune_ros.core.config import PreprocessConfig
from specprune_ros.core.prompt import SPACE_TOKEN_ID, PromptTokenizer, make_tiny_tokenizer_files
from specprune_ros.core.types import Observation
from specprune_ros.testbed import train as tr
from specprune_ros.testbed.data import dataset_statistics, generate
from specprune_ros.testbed.task import VIEWS, TabletopTask

TINY = dict(episodes=3, val_episodes=1, batch_size=2, vit_dim=16, vit_depth=2, vit_heads=1, llm_hidden=32,
            llm_layers=2, llm_heads=2, llm_intermediate=64, fp16=False, lr=1e-3, probe_layer=0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> PromptTokenizer:
    d = tmp_path_factory.mktemp("tok")
    for name, text in make_tiny_tokenizer_files(tr.task_words(), vocab_size=tr.VOCAB).items():
        (d / name).write_text(text)
    return PromptTokenizer(d / "tokenizer.json")


def test_word_tokenizer_keeps_llama_ids_and_makes_words_single_tokens(tokenizer):
    ids, prefix = tokenizer.encode("put the red cube on the blue plate")
    toks = [tokenizer.tok.id_to_token(i) for i in ids]
    assert ids[0] == 1 and ids[-1] == SPACE_TOKEN_ID
    assert toks[prefix + 1:prefix + 9] == ["▁put", "▁the", "▁red", "▁cube", "▁on", "▁the", "▁blue", "▁plate"]
    assert tokenizer.tok.token_to_id("<PAD>") == 32000 and tokenizer.tok.get_vocab_size() == 32001
    lengths = {len(tokenizer.encode(TabletopTask(s).instruction)[0]) for s in range(100)}
    assert lengths <= {21, 25}  # one token per word: about as long as the real Llama-2 prompts


def test_loss_decreases_on_a_tiny_model(tokenizer):
    cfg = tr.TrainConfig(**TINY)
    eps = generate(2, seed=5, noise=0.1)
    stats = dataset_statistics(eps)
    batcher = tr.Batcher(eps, stats, tokenizer)
    batch = batcher.sample(np.random.default_rng(0), 4)
    assert batch["pixel_values"].shape == (4, 12, 224, 224) and batch["actions"].shape == (4, 8, 7)
    model, _ = tr.build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = tr.l1_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_trained_checkpoint_loads_and_matches_the_in_memory_model(tmp_path):
    cfg = tr.TrainConfig(out_dir=str(tmp_path / "ckpt"), steps=2, **TINY)
    res = tr.train(cfg, progress=False, log=lambda m: None)
    assert res.steps_done == 2 and np.isfinite(res.train_loss) and res.val_loss is not None
    summary = json.loads((res.out_dir / "train_summary.json").read_text())
    assert summary["steps_done"] == 2
    # the in-memory model, from the saved training state
    model, _ = tr.build_model(cfg)
    state = torch.load(res.out_dir / tr.WORK_DIR / tr.STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    model.eval()
    policy = build_policy(PolicyConfig(checkpoint=str(res.out_dir), preset="off"))
    assert policy.unnorm_key == tr.UNNORM_KEY and policy.proprio_dim == 8 and policy.chunk_len == 8
    task = TabletopTask(3)
    frames = task.render()
    chunk = policy.infer(Observation(images=frames, proprio=task.proprio(), instruction=task.instruction))
    entry = json.loads((res.out_dir / "dataset_statistics.json").read_text())[tr.UNNORM_KEY]
    tok = PromptTokenizer(res.out_dir / "tokenizer.json")
    pixels = normalize([policy_frame(frames[v], PreprocessConfig()) for v in VIEWS])
    prop = torch.tensor(normalize_proprio(task.proprio(), entry["proprio"]), dtype=torch.float32)[None]
    ids = torch.tensor([tok.encode(task.instruction)[0]])
    with torch.no_grad():
        expected = unnormalize_actions(model(pixels, prop, ids)[0].numpy(), entry["action"])
    np.testing.assert_allclose(chunk.actions, expected, rtol=1e-4, atol=1e-5)
    # pruning presets run on it too
    paper = build_policy(PolicyConfig(checkpoint=str(res.out_dir), preset="paper"))
    out = paper.infer(Observation(images=frames, proprio=task.proprio(), instruction=task.instruction))
    assert out.actions.shape == (8, 7) and sum(out.stats.kept_per_view.values()) < 512


def test_resume_continues_and_refuses_a_different_configuration(tmp_path):
    out = str(tmp_path / "ckpt")
    tr.train(tr.TrainConfig(out_dir=out, steps=2, **TINY), progress=False, log=lambda m: None)
    logs = []
    res = tr.train(tr.TrainConfig(out_dir=out, steps=3, **TINY), progress=False, log=logs.append)
    assert res.steps_done == 3 and any("resuming" in m and "step 2" in m for m in logs)
    state = torch.load(tmp_path / "ckpt" / tr.WORK_DIR / tr.STATE_FILE, weights_only=True)
    assert len(state["losses"]) == 3
    with pytest.raises(ValueError, match="different configuration \\(lr: 0.001 there, 0.0005 now\\)"):
        tr.train(tr.TrainConfig(out_dir=out, steps=4, **{**TINY, "lr": 5e-4}), progress=False, log=lambda m: None)
    state_file = tmp_path / "ckpt" / tr.WORK_DIR / tr.STATE_FILE
    for broken in (state_file.read_bytes()[:500], b"not a torch file"):  # a truncated save, another file
        state_file.write_bytes(broken)
        with pytest.raises(ValueError, match="is unreadable .*remove it to start over"):
            tr.train(tr.TrainConfig(out_dir=out, steps=4, **TINY), progress=False, log=lambda m: None)


def test_init_from_starts_from_a_checkpoint_with_its_statistics_and_refuses_another_architecture(tmp_path):
    first = tr.train(tr.TrainConfig(out_dir=str(tmp_path / "a"), steps=3, **TINY), progress=False, log=lambda m: None)
    # other demonstrations (fine excursions), a learning rate too small to move the weights: the result is the start
    cfg = tr.TrainConfig(out_dir=str(tmp_path / "b"), steps=1, init_from=str(first.out_dir), fine_excursion_rate=0.1,
                         **{**TINY, "lr": 1e-9})
    second = tr.train(cfg, progress=False, log=lambda m: None)
    a, b = (load_model(inspect_checkpoint(r.out_dir)).state_dict() for r in (first, second))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    fresh, _ = tr.build_model(cfg)  # and not what a fresh initialization gives
    assert any(not torch.allclose(v, b[k]) for k, v in fresh.state_dict().items() if v.is_floating_point())
    stats = [json.loads((r.out_dir / "dataset_statistics.json").read_text()) for r in (first, second)]
    assert stats[0] == stats[1]  # the normalization the weights were trained with, not the new data's
    summary = json.loads((second.out_dir / "train_summary.json").read_text())
    assert summary["train_transitions"] != stats[1][tr.UNNORM_KEY]["num_transitions"]  # the new data's own count
    with pytest.raises(ValueError, match="architecture"):
        tr.train(tr.TrainConfig(out_dir=str(tmp_path / "c"), steps=1, init_from=str(first.out_dir),
                                **{**TINY, "llm_hidden": 64}), progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match="checkpoint directory not found"):
        tr.train(tr.TrainConfig(out_dir=str(tmp_path / "d"), steps=1, init_from=str(tmp_path / "missing"), **TINY),
                 progress=False, log=lambda m: None)


def test_grounding_warm_up_trains_the_probe_then_the_actions(tmp_path, tokenizer):
    cfg = tr.TrainConfig(out_dir=str(tmp_path / "ckpt"), steps=2, ground_steps=3, **TINY)
    # the warm-up's loss is the mid-layer probe's alone and touches only the layers up to probe_layer
    eps = generate(2, seed=6, noise=0.1)
    batch = tr.Batcher(eps, dataset_statistics(eps), tokenizer).sample(np.random.default_rng(1), 2)
    model, _ = tr.build_model(cfg)
    aux = tr.AuxHeads(cfg.llm_hidden, cfg.probe_layer)
    tr.grounding_loss(model, aux, batch).backward()
    assert aux.patch_mid.weight.grad.abs().sum() > 0 and aux.patch.weight.grad is None
    assert model.llm.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.llm.layers[1].self_attn.q_proj.weight.grad is None and model.action_head.model.fc2.weight.grad is None
    # the schedule: warm-up ramp, constant, then the action phase ramps up again
    long = tr.TrainConfig(steps=200, ground_steps=300, **TINY)  # warm-ups of 30 and 20 steps
    assert tr.lr_at(0, long) < tr.lr_at(29, long) == tr.lr_at(299, long) == long.lr
    assert tr.lr_at(300, long) < tr.lr_at(319, long) == long.lr > tr.lr_at(499, long)
    res = tr.train(cfg, progress=False, log=lambda m: None)
    assert res.steps_done == 5
    summary = json.loads((res.out_dir / "train_summary.json").read_text())
    assert len(summary["ground_ce_every_50"]) == 1 and len(summary["loss_curve_every_50"]) == 1
    state = torch.load(res.out_dir / tr.WORK_DIR / tr.STATE_FILE, weights_only=True)
    assert len(state["ground_losses"]) == 3 and len(state["losses"]) == 2
    with pytest.raises(ValueError, match="ground_steps"):
        tr.TrainConfig(ground_steps=10, probe_layer=-1)


def test_attention_grounding_loss_rewards_the_naming_words_looking_at_what_they_name(tokenizer):
    cfg = tr.TrainConfig(**{**TINY, "attention_layer": 1})
    eps = generate(2, seed=6, noise=0.1)
    batch = tr.Batcher(eps, dataset_statistics(eps), tokenizer).sample(np.random.default_rng(1), 2)
    words, plate_words = batch["object_words"], batch["plate_words"]
    ids = batch["prompt_ids"][:, 1:]
    assert words.sum(dim=1).tolist() == [2, 2]  # the named object's colour and shape
    assert plate_words.sum(dim=1).tolist() == [1, 1]  # the named plate's colour
    from specprune_ros.testbed.task import OBJECT_COLORS, PLATE_COLORS, SHAPES

    for row, mask, plate_mask in zip(ids, words, plate_words):
        colour, shape = (tokenizer.tok.id_to_token(int(i)).lstrip("\u2581") for i in row[mask])
        assert colour in OBJECT_COLORS and shape in SHAPES
        assert tokenizer.tok.id_to_token(int(row[plate_mask][0])).lstrip("\u2581") in PLATE_COLORS
    model, _ = tr.build_model(cfg)
    layout = model.layout(2, ids.shape[1])
    B, P, L = 2, ids.shape[1], layout.length

    def on(cls):  # (B, L) attention spread evenly over the patches of class cls
        mask = torch.zeros(B, L)
        mask[:, 1:513] = (batch["patch_labels"] == cls).float()
        assert (mask.sum(dim=1) > 0).all()
        return mask / mask.sum(dim=1, keepdim=True)

    def attention(object_rows_on, plate_rows_on):
        probs = torch.full((B, 2, P, L), 1.0 / L)
        for b in range(B):
            probs[b, :, words[b]] = object_rows_on[b]
            probs[b, :, plate_words[b]] = plate_rows_on[b]
        return probs

    obj, plate = on(tr.PATCH_NAMED_OBJECT), on(tr.PATCH_NAMED_PLATE)
    uniform = torch.full((B, L), 1.0 / L)
    keys = tr.labels_at(batch, layout, torch.arange(L)[None].expand(B, -1))
    focused = tr.attention_grounding_loss(attention(obj, plate), batch, keys)
    assert focused < 1e-4 < tr.attention_grounding_loss(attention(uniform, uniform), batch, keys)
    assert tr.attention_grounding_loss(attention(obj, uniform), batch, keys) > 1.0  # the plate word counts
    assert tr.attention_grounding_loss(attention(uniform, plate), batch, keys) > 1.0  # and the object words
    assert tr.attention_grounding_loss(attention(plate, obj), batch, keys) > 1.0  # each on its own thing
    # in the model, through the layer loop: a finite loss with a gradient on the layers up to attention_layer
    aux = tr.AuxHeads(cfg.llm_hidden, cfg.probe_layer, cfg.attention_layer)
    total, l1 = tr.training_losses(model, aux, batch, 0.5)
    total.backward()
    assert torch.isfinite(total) and model.llm.layers[1].self_attn.k_proj.weight.grad.abs().sum() > 0
    model.zero_grad()
    tr.grounding_loss(model, tr.AuxHeads(cfg.llm_hidden, -1, 0), batch).backward()
    assert model.llm.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.llm.layers[1].self_attn.q_proj.weight.grad is None


def test_training_attention_matches_the_fused_kernel_and_is_restored(tokenizer):
    cfg = tr.TrainConfig(**TINY)
    eps = generate(2, seed=6, noise=0.1)
    batch = tr.Batcher(eps, dataset_statistics(eps), tokenizer).sample(np.random.default_rng(1), 2)
    model, _ = tr.build_model(cfg)
    with torch.no_grad():
        fused = tr.l1_loss(model, batch)
        with tr.training_attention(model):
            assert model.language_model.config._attn_implementation == tr.TRAIN_ATTENTION
            written_out = tr.l1_loss(model, batch)
    assert model.language_model.config._attn_implementation != tr.TRAIN_ATTENTION
    assert all(m.fused_attn for m in model.vision_backbone.modules() if hasattr(m, "fused_attn"))
    assert torch.allclose(fused, written_out, atol=1e-5)


def readout_grounded(tokenizer):
    """(batch of 2, fresh 3-layer tiny model, its probes) with the object words grounded at layer 0 and the
    read-out's grounding on (readout_weight 1)."""
    cfg = tr.TrainConfig(**{**TINY, "llm_layers": 3, "attention_layer": 0, "readout_weight": 1.0})
    eps = generate(2, seed=6, noise=0.1)
    batch = tr.Batcher(eps, dataset_statistics(eps), tokenizer).sample(np.random.default_rng(1), 2)
    model, _ = tr.build_model(cfg)
    return batch, model, tr.AuxHeads(cfg.llm_hidden, -1, 0)


def test_training_losses_are_the_same_with_the_models_own_attention(tokenizer):
    # float32 training keeps the model's fused attention (written_out=False); the losses that read attention rows
    # (attention grounding at layer 0, the read-out's grounding after it) and their gradients do not change
    batch, model, aux = readout_grounded(tokenizer)
    results = []
    for written_out in (True, False):
        model.zero_grad()
        with tr.training_attention(model, written_out=written_out):
            implementation = model.language_model.config._attn_implementation
            total, l1 = tr.training_losses(model, aux, batch, 0.5, readout_weight=1.0)
        total.backward()
        results.append((implementation, total.item(), l1.item(), model.llm.layers[0].self_attn.q_proj.weight.grad.clone()))
    (impl_w, total_w, l1_w, grad_w), (impl_f, total_f, l1_f, grad_f) = results
    assert impl_w == tr.TRAIN_ATTENTION and impl_f != tr.TRAIN_ATTENTION
    assert total_w == pytest.approx(total_f, abs=1e-4) and l1_w == pytest.approx(l1_f, abs=1e-5)
    assert grad_w.abs().sum() > 0 and torch.allclose(grad_w, grad_f, atol=1e-5, rtol=1e-3)


def test_cli_help_and_bad_values(capsys):
    with pytest.raises(SystemExit) as exc:
        tr.main(["--help"])
    assert exc.value.code == 0 and "resumes" in capsys.readouterr().out
    assert tr.main(["--steps=0", "--out-dir=/nonexistent/x"]) == 2
    assert "steps=0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="vit_dim"):
        tr.TrainConfig(vit_dim=50, vit_heads=3)
    with pytest.raises(ValueError, match="probe_layer=5"):  # the last layer's output is the final state
        tr.TrainConfig(llm_layers=6, probe_layer=5)
    with pytest.raises(ValueError, match="excursion_rate"):
        tr.TrainConfig(excursion_rate=0.5)
    for bad, message in [({"max_minutes": float("nan")}, "max_minutes=nan must be a finite number"),
                         ({"sparse_weight": float("inf")}, "sparse_weight=inf must be a finite number"),
                         ({"seed": -5}, r"seed=-5 must lie in \[0, 2\*\*32\)"),
                         ({"data_seed": 1000}, r"data_seed=1000 must lie in \[0, 1000\)"),
                         ({"weight_decay": -1.0}, "weight_decay=-1.0 must be >= 0"),
                         ({"batch_size": 10**11}, "batch_size=100000000000 must be <= 4096")]:
        with pytest.raises(ValueError, match=message):
            tr.TrainConfig(**bad)


def test_training_refuses_an_unusable_output_directory_before_making_anything(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert tr.main([f"--out-dir={afile}", "--steps=1", "--no-progress"]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")  # e.g. a checkpoint that no training run made
    with pytest.raises(ValueError, match="non-empty directory that no training run made"):
        tr.train(tr.TrainConfig(out_dir=str(other), steps=1, **TINY), progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match="checkpoint directory not found"):
        tr.train(tr.TrainConfig(out_dir=str(tmp_path / "new"), steps=1, init_from=str(tmp_path / "missing"), **TINY),
                 progress=False, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "other"]  # nothing made for the refused runs


def test_a_run_without_action_steps_and_an_expert_that_fails_are_reported_without_nan_or_traceback(tmp_path, capsys):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "fp16"] + ["--no-fp16", "--no-progress"]
    # the time limit before the first step: no training loss, which is null in JSON (NaN is not JSON)
    assert tr.main([f"--out-dir={tmp_path / 'none'}", "--steps=3", "--max-minutes=1e-9", "--json", *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 0 and out["train_l1"] is None
    assert json.loads((tmp_path / "none" / "train_summary.json").read_text())["train_l1_last50"] is None
    # demonstrations the expert cannot make (all noise): one line, exit 2
    assert tr.main([f"--out-dir={tmp_path / 'noisy'}", "--noise=1.0", "--excursion-rate=0.2", *flags]) == 2
    err = capsys.readouterr().err
    assert "specprune-train: error: the expert failed on most seeds" in err and "Traceback" not in err


def test_every_training_option_is_explained_in_help():
    helps = {a.dest: a.help for a in tr._parser()._actions}
    for field in dataclasses.fields(tr.TrainConfig):
        text = helps[field.name]
        assert not text.startswith("(default") and len(text) > 25, (field.name, text)  # more than the default
        assert "``" not in text and ":class:" not in text and text.endswith(")"), (field.name, text)
    assert helps["init_from"].startswith("a checkpoint directory of the same architecture (released layout, e.g. an")
    assert helps["llm_layers"].split(" (default")[0] == helps["llm_hidden"].split(" (default")[0]  # one entry, several
    doc = """Attributes:
            a: first. Second.
            b, c: shared text
                continued. More.
        Rest."""
    assert tr.attribute_help(doc) == {"a": "first.", "b": "shared text continued.", "c": "shared text continued."}


def test_patch_labels_mark_named_and_other_objects_and_plates():
    from specprune_ros.core.config import PreprocessConfig
    from specprune_ros.core.preprocess import policy_frame
    from specprune_ros.testbed.task import OBJECT_COLORS

    found = others = 0
    for seed in range(10):
        task = TabletopTask(seed)
        lab = tr.patch_labels(task, "primary", PreprocessConfig())
        assert lab.shape == (256,) and set(np.unique(lab)) <= {0, 1, 2, 3, 4}
        assert (lab == tr.PATCH_NAMED_PLATE).sum() >= 4 and (lab == tr.PATCH_OTHER_PLATE).sum() >= 4  # plates span patches
        found += (lab == tr.PATCH_NAMED_OBJECT).any()
        others += (lab == tr.PATCH_OTHER_OBJECT).any()
        # each labelled object patch is where that object's colour is in the policy frame
        frame = policy_frame(task.render()["primary"], PreprocessConfig()).astype(int)
        sc = task.scene
        for k, obj in enumerate(sc.objects):
            colour = np.array(OBJECT_COLORS[obj.color])
            near = (np.abs(frame - colour).sum(axis=2) < 60).reshape(16, 14, 16, 14).any(axis=(1, 3)).reshape(-1)
            renamed = tr.relabelled_scene(sc, (k - sc.target) % len(sc.objects), False)
            task.scene = renamed
            mine = tr.patch_labels(task, "primary", PreprocessConfig()) == tr.PATCH_NAMED_OBJECT
            task.scene = sc
            if mine.any():
                assert near[mine].any(), f"seed {seed}: patches labelled as the {obj.color} object do not show it"
                # named, its patches are class 1; named another, they are class 3 (unless the named one covers them)
                assert set(lab[mine]) <= ({tr.PATCH_NAMED_OBJECT} if k == sc.target else {tr.PATCH_OTHER_OBJECT, tr.PATCH_NAMED_OBJECT})
    assert found >= 9 and others >= 9


def test_auxiliary_losses_add_to_the_action_loss(tokenizer):
    cfg = tr.TrainConfig(**TINY)
    eps = generate(2, seed=6, noise=0.1)
    batch = tr.Batcher(eps, dataset_statistics(eps), tokenizer).sample(np.random.default_rng(1), 2)
    assert batch["patch_labels"].shape == (2, 512) and batch["where"].shape == (2, tr.WHERE_DIM)
    w = batch["where"].numpy()  # plate, object, object - gripper, gripper, plate - gripper
    np.testing.assert_allclose(w[:, 4:6], w[:, 2:4] - w[:, 6:8], atol=1e-6)
    np.testing.assert_allclose(w[:, 8:10], w[:, 0:2] - w[:, 6:8], atol=1e-6)
    model, _ = tr.build_model(cfg)
    total, l1 = tr.training_losses(model, tr.AuxHeads(cfg.llm_hidden), batch, 0.5)
    plain, l1_again = tr.training_losses(model, None, batch, 0.5)
    assert torch.isfinite(total) and total > l1
    assert torch.allclose(l1, l1_again) and torch.allclose(plain, tr.l1_loss(model, batch))
    # the mid-layer patch probe adds its own cross-entropy on the states leaving layer 0
    aux = tr.AuxHeads(cfg.llm_hidden, probe_layer=0)
    with_mid, _ = tr.training_losses(model, aux, batch, 0.5)
    mid_head, aux.patch_mid = aux.patch_mid, None
    without_mid, _ = tr.training_losses(model, aux, batch, 0.5)
    assert with_mid > without_mid
    aux.patch_mid = mid_head
    with_mid.backward()
    assert aux.patch_mid.weight.grad is not None and aux.patch_mid.weight.grad.abs().sum() > 0


def test_relabelled_samples_name_another_object_and_carry_the_experts_plan_for_it(tokenizer):
    from specprune_ros.testbed.expert import expert_plan

    eps = generate(2, seed=8, noise=0.1)
    ep = eps[0]
    stats = dataset_statistics(eps)
    batcher = tr.Batcher(eps, stats, tokenizer, relabel=1.0)
    task = TabletopTask(ep.seed)
    scene = task.scene
    other = tr.relabelled_scene(scene, 1, True)
    assert other.target == (scene.target + 1) % len(scene.objects) and other.goal_plate != scene.goal_plate
    assert scene.objects[other.target].name in other.instruction and other.plate_colors[other.goal_plate] in other.instruction
    assert len(tokenizer.encode(other.instruction)[0]) == len(tokenizer.encode(ep.instruction)[0])

    free = 3  # early in the episode: nothing held yet
    held = int(np.flatnonzero(ep.snapshots[:, 5] >= 0)[0]) + 2  # the named object is in the hand
    plain = batcher.make([(0, free), (0, held)])
    moved = batcher.make([(0, free), (0, held)], [(1, True), (1, True)])
    lo, hi = np.asarray(stats["action"]["q01"]), np.asarray(stats["action"]["q99"])
    mask = np.asarray(stats["action"]["mask"])

    def normalized(chunk):
        return np.clip(np.where(mask, 2 * (chunk - lo) / (hi - lo + 1e-8) - 1, chunk), -1, 1)

    task.restore(ep.snapshots[free])
    task.scene = other
    np.testing.assert_allclose(moved["actions"][0].numpy(), normalized(expert_plan(task, 8)), atol=1e-6)
    np.testing.assert_array_equal(moved["patch_labels"][0].numpy()[:256], tr.patch_labels(task, "primary", PreprocessConfig()))
    assert not torch.equal(moved["patch_labels"][0], plain["patch_labels"][0])
    assert moved["prompt_ids"][0].tolist() == tokenizer.encode(other.instruction)[0]
    # holding the named object, only the plate is renamed: the object stays the one in the hand
    text = tokenizer.tok.decode(moved["prompt_ids"][1].tolist())
    assert scene.objects[scene.target].name in text and other.plate_colors[other.goal_plate] in text
    cached = batcher.tasks[ep.seed].scene  # the cached task is left with its own scene
    assert (cached.target, cached.goal_plate, cached.instruction) == (scene.target, scene.goal_plate, ep.instruction)
    np.testing.assert_allclose(plain["actions"][0].numpy(), normalized(ep.action_chunk(free)), atol=1e-6)


def test_token_drop_runs_the_pass_on_each_samples_own_patch_subset(tokenizer):
    cfg = tr.TrainConfig(**{**TINY, "llm_layers": 3, "attention_layer": 2, "probe_layer": 1})
    eps = generate(2, seed=6, noise=0.1)
    batch = tr.Batcher(eps, dataset_statistics(eps), tokenizer).sample(np.random.default_rng(1), 2)
    model, _ = tr.build_model(cfg)
    model.eval()
    layout = model.layout(2, batch["prompt_ids"].shape[1] - 1)
    keep = tr.token_drop_positions(np.random.default_rng(3), layout, 2, min_keep=20)
    # every non-visual token, as many patches of each view in every sample, different ones, in sequence order
    non_visual = [0, *range(layout.vis_start + layout.n_visual, layout.length)]
    view = (keep - layout.vis_start).div(256, rounding_mode="floor")
    for row, v in zip(keep, view):
        assert set(non_visual) <= set(row.tolist()) and (row.diff() > 0).all()
    assert (view == 0).sum(dim=1).tolist()[0] == (view == 0).sum(dim=1).tolist()[1] >= 20
    assert (view == 1).sum(dim=1).tolist()[0] == (view == 1).sum(dim=1).tolist()[1] >= 20
    assert not torch.equal(keep[0], keep[1])
    # a per-sample (B, L') keep is what the 1-D keep of each sample's own row gives
    seq = model.assemble(model.embed_vision(batch["pixel_values"]), batch["proprio"], batch["prompt_ids"])
    pos = torch.arange(seq.shape[1])[None].expand(2, -1)

    class Drop:
        def __init__(self, k):
            self.k = k

        def score_rows(self, layer, position_ids):
            return None

        def after_layer(self, layer, probs, position_ids):
            return self.k if layer == 0 else None

    with torch.no_grad():
        both, both_pos, _ = model.run_layers(seq, pos, hooks=Drop(keep))
        for b in range(2):
            one, one_pos, _ = model.run_layers(seq[b:b + 1], pos[b:b + 1], hooks=Drop(keep[b]))
            torch.testing.assert_close(both[b:b + 1], one, atol=1e-5, rtol=1e-5)
            assert torch.equal(both_pos[b], one_pos[0]) and torch.equal(both_pos[b], keep[b])
    # the training losses on the dropped pass: labels follow the kept patches, all terms finite, gradients flow
    aux = tr.AuxHeads(cfg.llm_hidden, cfg.probe_layer, cfg.attention_layer)
    full, _ = tr.training_losses(model, aux, batch, 0.5, drop_layer=0)
    dropped, l1 = tr.training_losses(model, aux, {**batch, "keep": keep}, 0.5, drop_layer=0)
    assert torch.isfinite(dropped) and not torch.isclose(full, dropped)
    dropped.backward()
    assert aux.patch_mid.weight.grad.abs().sum() > 0 and model.llm.layers[2].self_attn.q_proj.weight.grad.abs().sum() > 0
    labels = tr.labels_at(batch, layout, keep)
    assert (labels[:, 0] == -1).all() and (labels[:, -1] == -1).all()
    vis = keep[0, 1:1 + (view[0] < 2).sum() - 1]
    assert torch.equal(labels[0, 1:1 + len(vis)], batch["patch_labels"][0, vis - 1])
    with pytest.raises(ValueError, match="token_drop="):
        tr.TrainConfig(**{**TINY, "token_drop": 1.5})
    with pytest.raises(ValueError, match="token_drop_layer="):
        tr.TrainConfig(**{**TINY, "token_drop": 0.5, "token_drop_layer": 1})


def test_training_with_token_drop_writes_a_loadable_checkpoint(tmp_path):
    cfg = tr.TrainConfig(**{**TINY, "out_dir": str(tmp_path / "ck"), "steps": 4, "token_drop": 1.0, "token_drop_min": 8})
    res = tr.train(cfg, progress=False, log=lambda m: None)
    assert res.steps_done == 4 and np.isfinite(res.train_loss)
    assert json.loads((tmp_path / "ck" / "train_summary.json").read_text())["train_config"]["token_drop"] == 1.0
    load_model(inspect_checkpoint(tmp_path / "ck"))


def _hooks_with(layout, n_layers, text, action, prefix_len):
    """Hand-made training hooks: every layer sees the full sequence; layers 0-1 hold the task words' attention
    ``text`` (L,), the later ones the action placeholders' ``action`` (L,), the same for every row and head."""
    rows = tr._wanted_rows(layout, n_layers, -1, prefix_len, premise=True, sparse=True)
    hooks = tr._TrainHooks(rows)
    pos = torch.arange(layout.length)[None]
    for layer in range(n_layers):
        scores = text if layer in tr.LOCAL_LAYERS else action
        probs = scores.expand(1, 2, rows[layer].numel(), layout.length)
        hooks.after_layer(layer, probs, pos)
    return hooks


def test_premise_loss_is_zero_when_the_first_layers_predict_the_readouts_attention_and_trains_only_them():
    from specprune_ros.core.model import SequenceLayout

    layout = SequenceLayout(n_views=2, has_proprio=True, prompt_len=12, n_action_tokens=56)
    n_layers, prefix = 4, 5
    rng = torch.Generator().manual_seed(0)
    action = torch.rand(layout.length, generator=rng)
    action = action / action.sum()
    same = tr.premise_loss(_hooks_with(layout, n_layers, action.clone(), action, prefix), layout, n_layers, prefix)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    # only the patches count, per view: non-visual attention and a per-view scale change nothing
    text = action.clone()
    text[: layout.vis_start] = 5.0
    text[layout.vis_start + 256: layout.vis_start + 512] *= 3.0
    assert float(tr.premise_loss(_hooks_with(layout, n_layers, text, action, prefix), layout, n_layers, prefix)) \
        == pytest.approx(0.0, abs=1e-6)
    # attention on other patches than the read-out's costs, and the gradient reaches the prediction only
    text = action.flip(0).clone().requires_grad_(True)
    target = action.clone().requires_grad_(True)
    loss = tr.premise_loss(_hooks_with(layout, n_layers, text, target, prefix), layout, n_layers, prefix)
    assert loss.item() > 0.05
    loss.backward()
    assert text.grad.abs().sum() > 0 and target.grad is None
    # the rows read are the task words (after the prefix) at layers 0-1 and the placeholders after them
    rows = tr._wanted_rows(layout, n_layers, -1, prefix, premise=True, sparse=False)
    assert rows[0].tolist() == list(range(layout.prompt_start + prefix, layout.prompt_start + layout.prompt_len))
    assert rows[3].tolist() == list(range(layout.action_start, layout.action_start + layout.n_action_tokens))
    # a grounding layer among them adds the whole prompt's rows; each reads back its own
    both = tr._wanted_rows(layout, n_layers, 1, prefix, premise=True, sparse=False)
    assert both[1].tolist() == list(range(layout.prompt_start, layout.prompt_start + layout.prompt_len))
    assert both[0].tolist() == rows[0].tolist() and both[2].tolist() == rows[2].tolist()


def test_readout_entropy_loss_is_one_for_uniform_and_zero_for_one_hot_rows():
    from specprune_ros.core.model import SequenceLayout

    layout = SequenceLayout(n_views=2, has_proprio=True, prompt_len=12, n_action_tokens=56)
    uniform = torch.full((layout.length,), 1.0 / layout.length)
    assert float(tr.readout_entropy_loss(_hooks_with(layout, 4, uniform, uniform, 5), layout, 4)) == pytest.approx(1.0)
    one_hot = torch.zeros(layout.length)
    one_hot[0] = 1.0
    assert float(tr.readout_entropy_loss(_hooks_with(layout, 4, uniform, one_hot, 5), layout, 4)) == pytest.approx(0.0, abs=1e-6)


def test_training_with_the_premise_and_sparsity_losses_moves_them_and_writes_a_loadable_checkpoint(tmp_path, tokenizer):
    cfg = tr.TrainConfig(**{**TINY, "llm_layers": 4, "attention_layer": 2, "premise_weight": 1.0, "sparse_weight": 1.0})
    eps = generate(2, seed=6, noise=0.1)
    batch = tr.Batcher(eps, dataset_statistics(eps), tokenizer).sample(np.random.default_rng(1), 2)
    assert int(batch["prefix_len"]) == tokenizer.encode(eps[0].instruction)[1] > 0
    model, _ = tr.build_model(cfg)
    layout = model.layout(2, batch["prompt_ids"].shape[1] - 1)
    batch["keep"] = tr.token_drop_positions(np.random.default_rng(3), layout, 2, min_keep=20)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    entropies = []
    for _ in range(12):
        with tr.training_attention(model):
            _, _, layout, _, hooks = tr._grounded_pass(model, None, batch, drop_layer=0, premise=True, sparse=True)
            entropy = tr.readout_entropy_loss(hooks, layout, model.n_layers)
            loss = entropy + tr.premise_loss(hooks, layout, model.n_layers, int(batch["prefix_len"]))
        entropies.append(entropy.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert entropies[-1] < entropies[0] - 0.01
    run = tr.TrainConfig(**{**TINY, "out_dir": str(tmp_path / "ck"), "steps": 3, "llm_layers": 3, "token_drop": 0.5,
                            "premise_weight": 0.5, "sparse_weight": 0.1})
    res = tr.train(run, progress=False, log=lambda m: None)
    assert res.steps_done == 3 and np.isfinite(res.train_loss)
    load_model(inspect_checkpoint(tmp_path / "ck"))
    with pytest.raises(ValueError, match="llm_layers >= 3"):
        tr.TrainConfig(**{**TINY, "premise_weight": 0.5})
    with pytest.raises(ValueError, match="sparse_weight"):
        tr.TrainConfig(**{**TINY, "llm_layers": 3, "sparse_weight": -1.0})


def test_readout_grounding_loss_rewards_attention_on_the_named_object_and_plate_only():
    from specprune_ros.core.model import SequenceLayout

    layout = SequenceLayout(n_views=2, has_proprio=True, prompt_len=12, n_action_tokens=56)
    n_layers, grounded = 4, 1
    rows = tr._wanted_rows(layout, n_layers, grounded, 5, premise=False, sparse=False, readout=True)
    assert sorted(rows) == [1, 2, 3]  # the grounding layer's prompt rows and the placeholders after it
    for layer in (2, 3):
        assert rows[layer].tolist() == list(range(layout.action_start, layout.action_start + layout.n_action_tokens))
    labels = torch.zeros(2, 512, dtype=torch.long)
    labels[0, 10:14] = tr.PATCH_NAMED_OBJECT
    labels[0, 300:304] = tr.PATCH_NAMED_PLATE
    labels[0, 50:60] = tr.PATCH_OTHER_OBJECT  # sample 1 shows neither the named object nor the plate
    batch = {"patch_labels": labels}
    vis = layout.vis_start

    def loss_for(weights):  # weights (2, L): the same attention row for every head and placeholder
        hooks = tr._TrainHooks(rows)
        pos = torch.arange(layout.length)[None].expand(2, -1)
        for layer in rows:
            hooks.after_layer(layer, weights[:, None, None].expand(2, 2, rows[layer].numel(), layout.length), pos)
        return tr.readout_grounding_loss(hooks, layout, n_layers, grounded, batch)

    on_named = torch.zeros(2, layout.length)
    on_named[0, vis + 10: vis + 14] = on_named[0, vis + 300: vis + 304] = 0.125
    on_named[1, 0] = 1.0  # whatever sample 1 attends to is left out
    assert float(loss_for(on_named)) == pytest.approx(0.0, abs=1e-5)
    uniform = torch.full((2, layout.length), 1.0 / layout.length)
    assert float(loss_for(uniform)) == pytest.approx(-math.log(8 / layout.length), rel=1e-3)
    other = torch.zeros(2, layout.length)
    other[:, vis + 50: vis + 60] = 0.1
    assert float(loss_for(other)) > 10
    with pytest.raises(ValueError, match="readout_weight needs"):
        tr.TrainConfig(**{**TINY, "readout_weight": 0.3})
    with pytest.raises(ValueError, match="readout_weight needs"):
        tr.TrainConfig(**{**TINY, "readout_weight": 0.3, "attention_layer": TINY.get("llm_layers", 2) - 1})


def test_training_with_readout_grounding_moves_the_readouts_attention_to_the_named_object(tokenizer):
    batch, model, aux = readout_grounded(tokenizer)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        with tr.training_attention(model):
            _, _, layout, _, hooks = tr._grounded_pass(model, aux, batch, readout=True)
            loss = tr.readout_grounding_loss(hooks, layout, model.n_layers, 0, batch)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.1
    with tr.training_attention(model):
        total, l1 = tr.training_losses(model, aux, batch, 0.5, readout_weight=1.0)
        plain, _ = tr.training_losses(model, aux, batch, 0.5)
    assert total.item() > plain.item()


def test_data_cli_checks_its_output_path_before_generating(tmp_path, capsys):
    from specprune_ros.testbed import data

    assert data.main(["--episodes=1", f"--out={tmp_path / 'missing' / 'eps.npz'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert data.main(["--episodes=1", f"--out={tmp_path}"]) == 2
    assert "a directory" in capsys.readouterr().err
