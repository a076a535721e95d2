"""specprune-bench: baseline (`off`) and a pruning preset side by side on the same episode, interleaved.

Observations come from a scripted episode of the procedural test-bed task (objects and the gripper move,
the wrist camera moves with the gripper, coarse and fine phases), so frame differences, the global set
and the controller behave as in closed loop. Reports medians per stage, speed-up ratios, tokens per layer
and the decoder FLOPs ratio the same pruning gives on the full 7B backbone.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..core.checkpoint import Checkpoint, inspect_checkpoint, load_model
from ..core.config import PolicyConfig, device_problem
from ..core.flops import FULL_7B, LlmShape, llm_flops_ratio
from ..core.policy import TORCH_DTYPES, OFTPolicy
from ..core.presets import PRESETS
from ..core.prompt import make_tiny_tokenizer_files
from ..core.tiny import SIZES, VOCAB, random_model, tiny_statistics
from ..core.types import Observation
from .common import ArgumentParser, print_json, run

PROG = "specprune-bench"
STAGES = ("preprocess", "vision", "static_prune", "llm", "head", "total")


def episode(n_queries: int, seed: int, chunk_len: int = 8) -> list[Observation]:
    """Observations at query times of a scripted test-bed episode (the expert acts; the policy only looks)."""
    from ..testbed.expert import expert_action
    from ..testbed.task import TabletopTask

    task = TabletopTask(seed=seed)
    out: list[Observation] = []
    executed: np.ndarray | None = None
    for q in range(n_queries):
        out.append(
            Observation(
                images=task.render(), proprio=task.proprio(), instruction=task.instruction,
                stamp=q * chunk_len * 0.05, executed_actions=executed,
            )
        )
        rows = []
        for _ in range(chunk_len):
            a = expert_action(task)
            rows.append(a)
            if task.done:
                task.reset()  # keep going: a benchmark needs frames, not success
            task.step(a)
        executed = np.array(rows)
    return out


def random_policy(size: str, config: PolicyConfig, seed: int, workdir: Path) -> OFTPolicy:
    """An OFTPolicy over an in-memory random model of ``size`` (no weight file is written)."""
    model, cfg = random_model(size, seed, device=config.device, dtype=TORCH_DTYPES[config.dtype])
    files = make_tiny_tokenizer_files(vocab_size=VOCAB)
    for name, text in files.items():
        (workdir / name).write_text(text)
    ckpt = Checkpoint(
        path=workdir, config=cfg, spec=model.spec, stats=tiny_statistics(), weight_files=[],
        action_head_file=workdir / "in-memory", proprio_file=None, tokenizer_file=workdir / "tokenizer.json",
        action_head_state={}, proprio_state=None,
    )
    return OFTPolicy(config, ckpt, model)


def share_policy(base: OFTPolicy, preset: str, proportional: bool = False, merge: bool = False) -> OFTPolicy:
    """Same weights, another preset (``proportional``, ``merge``: those PolicyConfig fields)."""
    cfg = PolicyConfig.from_mapping({**{k: getattr(base.config, k) for k in PolicyConfig.fields_doc()}, "preset": preset,
                                     "proportional": proportional, "merge": merge})
    return OFTPolicy(cfg, base.checkpoint, base.model)


def median(xs) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64))) if len(xs) else float("nan")


#: file types --plot writes
PLOT_FORMATS = (".png", ".svg", ".pdf")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Benchmark a pruning preset against the unpruned baseline on the same observations, interleaved "
        "step by step after warm-up. Models have random weights: 'tiny' (tests), 'mid' (real token layout, 32-layer "
        "Llama of width 1024, reduced ViTs: minutes on a CPU), 'full' (the 7B architecture; needs a GPU).",
    )
    p.add_argument("--model", choices=sorted(SIZES), default="mid", help="model size (default: mid)")
    p.add_argument("--checkpoint", default=None, help="benchmark this checkpoint directory instead of a random model")
    p.add_argument("--steps", type=int, default=20, help="timed queries per policy (default: 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed queries per policy first (default: 2)")
    p.add_argument("--preset", default="paper", help=f"pruning preset: {', '.join(p for p in PRESETS if p != 'off')} (default: paper)")
    p.add_argument("--proportional", action="store_true",
                   help="the preset with proportional attention (PolicyConfig.proportional; docs/method.md section 6)")
    p.add_argument("--merge", action="store_true", help="... and the dropped tokens merged into the kept ones (implies "
                   "--proportional; PolicyConfig.merge)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--seed", type=int, default=0, help="weights and episode seed (default: 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", dest="json_out", nargs="?", const="-", default=None, metavar="OUT",
                   help="write the results as JSON to OUT (without OUT or '-': to stdout)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help=f"write a tokens-per-layer plot ({', '.join(PLOT_FORMATS)}; default: next to a --json file)")
    return p


def main_args(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.proportional = args.proportional or args.merge  # --merge implies --proportional, decided once
    if args.preset not in PRESETS or args.preset == "off":
        raise ValueError(f"--preset must be one of {[p for p in PRESETS if p != 'off']}, got {args.preset!r}")
    if args.steps < 1 or args.warmup < 0:
        raise ValueError("--steps must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    for option, path in (("--json", args.json_out), ("--plot", args.plot)):  # before minutes of benchmarking
        if path and path != "-" and (Path(path).is_dir() or not Path(path).absolute().parent.is_dir()):
            raise ValueError(f"{option}={path}: not a writable file path (a directory, or its folder does not exist)")
    if args.plot is not None and Path(args.plot).suffix.lower() not in PLOT_FORMATS:
        raise ValueError(f"--plot={args.plot}: name a {', '.join(PLOT_FORMATS)} file")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    why = device_problem(device)
    if why:
        raise ValueError(why)
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if args.model == "full" and device == "cpu" and not args.checkpoint:
        raise ValueError("--model=full needs about 30 GB in fp32 on the CPU; use --device=cuda (bf16, ~16 GB)")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet = args.json_out == "-"
    log = (lambda *a: print(*a, file=sys.stderr)) if quiet else print

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base_cfg = PolicyConfig(checkpoint=args.checkpoint or "", device=device, dtype=dtype, preset="off", seed=args.seed)
        if args.checkpoint:
            ckpt = inspect_checkpoint(args.checkpoint)
            base = OFTPolicy(base_cfg, ckpt, load_model(ckpt, device, TORCH_DTYPES[dtype]))
        else:
            base = random_policy(args.model, base_cfg, args.seed, Path(tmp))
        pruned = share_policy(base, args.preset, args.proportional, args.merge)
        load_s = time.perf_counter() - t0
        log(f"model ready in {load_s:.1f}s ({args.checkpoint or args.model}, {device}, {dtype})")
        obs = episode(args.warmup + args.steps, seed=args.seed, chunk_len=base.chunk_len)

        for i in range(args.warmup):
            base.infer(obs[i])
            pruned.infer(obs[i])
        base.reset()
        pruned.reset()
        runs: dict[str, list] = {"off": [], args.preset: []}
        bar = tqdm(range(args.steps), desc=f"off vs {args.preset}", unit="step", file=sys.stderr)
        for i in bar:
            o = obs[args.warmup + i]
            order = [(base, "off"), (pruned, args.preset)]
            if i % 2:
                order.reverse()  # alternate who runs first: no position bias
            for pol, name in order:
                runs[name].append(pol.infer(o).stats)
            bar.set_postfix(off=f"{runs['off'][-1].timings_ms['total']:.0f}ms", pruned=f"{runs[args.preset][-1].timings_ms['total']:.0f}ms")

    result = summarize(runs, args, device, dtype, base)
    result["load_s"] = load_s
    report(result, log)
    if args.json_out:
        if args.json_out == "-":
            print_json(result)
        else:
            Path(args.json_out).write_text(json.dumps(result, indent=2))
            log(f"wrote {args.json_out}")
    plot = args.plot or (str(Path(args.json_out).with_suffix(".png")) if args.json_out and args.json_out != "-" else None)
    if plot:
        plot_tokens(result, plot)
        log(f"wrote {plot}")
    return 0


def summarize(runs: dict, args, device: str, dtype: str, base: OFTPolicy) -> dict:
    off, pr = runs["off"], runs[args.preset]
    med = {name: {s: median([r.timings_ms[s] for r in rs]) for s in STAGES} for name, rs in runs.items()}
    kept = [sum(r.kept_per_view.values()) for r in pr]
    n_visual = 256 * len(base.views)
    off_trace = [int(np.median(col)) for col in zip(*[r.tokens_per_layer for r in off])]
    pr_trace = [int(np.median(col)) for col in zip(*[r.tokens_per_layer for r in pr])]
    own_shape = LlmShape.from_text_config(base.checkpoint.spec.text_config)
    fixed = PRESETS[args.preset].local_layers[1] + 1  # V_local's layers are absolute at every depth
    flops_full = float(np.mean([llm_flops_ratio(r.tokens_per_layer, o.tokens_per_layer, FULL_7B, fixed) for r, o in zip(pr, off)]))
    flops_own = float(np.mean([llm_flops_ratio(r.tokens_per_layer, o.tokens_per_layer, own_shape) for r, o in zip(pr, off)]))
    ratio = lambda stage: med["off"][stage] / med[args.preset][stage] if med[args.preset][stage] > 0 else float("nan")  # noqa: E731
    per_step = [o.timings_ms["total"] / p.timings_ms["total"] for o, p in zip(off, pr)]
    return {
        "model": args.checkpoint or args.model,
        "preset": args.preset,
        "proportional": args.proportional,
        "merge": args.merge,
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or platform.machine(),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "baseline_ms": med["off"]["total"],
        "pruned_ms": med[args.preset]["total"],
        "speedup": ratio("total"),
        "speedup_per_step_median": median(per_step),
        "llm_speedup": ratio("llm"),
        "stage_ms": med,
        "tokens_total": off[0].total_tokens,
        "tokens_kept_mean": float(np.mean(kept)),
        "visual_kept_fraction": float(np.mean(kept)) / n_visual,
        "tokens_per_layer": {"off": off_trace, args.preset: pr_trace},
        "flops_ratio_full": flops_full,
        "flops_ratio_model": flops_own,
        "machinery_fraction": med[args.preset]["static_prune"] / med[args.preset]["total"],
        "modes": [r.mode for r in pr],
        "fine_fraction": float(np.mean([r.mode == "fine" for r in pr])),
    }


def report(r: dict, log) -> None:
    log(f"\n{r['model']} on {r['device']} ({r['device_name']}, {r['dtype']}, {r['threads']} threads), {r['steps']} steps, preset {r['preset']}")
    log(f"{'stage':>14} {'off ms':>10} {r['preset'] + ' ms':>12} {'ratio':>7}")
    for s in STAGES:
        a, b = r["stage_ms"]["off"][s], r["stage_ms"][r["preset"]][s]
        log(f"{s:>14} {a:10.1f} {b:12.1f} {a / b if b > 0 else float('nan'):7.2f}")
    log(f"end-to-end speed-up {r['speedup']:.2f}x, LLM-only {r['llm_speedup']:.2f}x")
    log(f"visual tokens kept after static pruning {r['tokens_kept_mean']:.1f} of 512 ({100 * r['visual_kept_fraction']:.1f}%), "
        f"tokens entering the last layer {r['tokens_per_layer'][r['preset']][-1]} of {r['tokens_total']}")
    log(f"decoder FLOPs ratio at full 7B size {r['flops_ratio_full']:.3f} (this model: {r['flops_ratio_model']:.3f}); "
        f"pruning machinery {100 * r['machinery_fraction']:.1f}% of the pruned step; fine mode {100 * r['fine_fraction']:.0f}% of steps")


def plot_tokens(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, trace in r["tokens_per_layer"].items():
        ax.step(range(len(trace)), trace, where="post", label=name)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("tokens entering the layer (median)")
    ax.set_title(f"{r['model']}: {r['preset']} vs off, speed-up {r['speedup']:.2f}x (LLM {r['llm_speedup']:.2f}x)")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return run(main_args, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
