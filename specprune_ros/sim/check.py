"""Check and time the LIBERO simulator in this environment: ``python -m specprune_ros.sim.check``.

Run it with the simulator venv's interpreter (``.venv-sim/bin/python -m specprune_ros.sim.check``).
It creates one task, resets it, and times simulator steps with and without rendering the two cameras.
``make sim-setup`` runs it with ``--quick --write-marker`` to find an offscreen GL backend that works on
this machine (EGL, else OSMesa) and records it in ``<venv>/MUJOCO_GL`` for later runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _time_backend(suite: str, task_id: int, render: bool, steps: int) -> dict:
    import numpy as np

    from .libero_env import LiberoSim, TaskSpec

    t0 = time.perf_counter()
    sim = LiberoSim(TaskSpec(suite=suite, task_id=task_id, render=render))
    create_s = time.perf_counter() - t0
    try:
        resets = []
        for i in range(2):
            t0 = time.perf_counter()
            frame = sim.reset(i)
            resets.append(time.perf_counter() - t0)
        action = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
        t0 = time.perf_counter()
        for _ in range(steps):
            frame, _ = sim.step(action)
        step_s = (time.perf_counter() - t0) / max(steps, 1)
        if render:
            img = frame.images["agentview"]
            if img.shape != (sim.spec.resolution, sim.spec.resolution, 3) or float(img.std()) < 1.0:
                raise RuntimeError(f"rendering produced no image (shape {img.shape}, std {float(img.std()):.2f})")
        return {
            "render": render,
            "create_s": round(create_s, 3),
            "first_reset_s": round(resets[0], 3),
            "reset_s": round(resets[1], 3),
            "step_s": round(step_s, 4),
            "steps": steps,
        }
    finally:
        sim.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m specprune_ros.sim.check",
        description="Check that LIBERO renders offscreen here and time create / reset / step.",
    )
    parser.add_argument("--gl", choices=["egl", "osmesa"], default=None, help="MUJOCO_GL backend (default: the environment's, else the venv's recorded one, else egl)")
    parser.add_argument("--suite", default="libero_spatial", help="LIBERO suite (default: libero_spatial)")
    parser.add_argument("--task-id", type=int, default=0, help="task index (default: 0)")
    parser.add_argument("--steps", type=int, default=20, help="steps to time per mode (default: 20)")
    parser.add_argument("--quick", action="store_true", help="render only, 2 steps: a functional check")
    parser.add_argument("--write-marker", action="store_true", help="on success record the GL backend in <venv>/MUJOCO_GL")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args(argv)
    if args.gl:
        os.environ["MUJOCO_GL"] = args.gl
        os.environ["PYOPENGL_PLATFORM"] = args.gl
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from .libero_env import configure_rendering

        backend = configure_rendering()
        results = {"mujoco_gl": backend, "suite": args.suite, "task_id": args.task_id, "runs": []}
        modes = [True] if args.quick else [True, False]
        for render in modes:
            results["runs"].append(_time_backend(args.suite, args.task_id, render, 2 if args.quick else args.steps))
    except Exception as exc:  # a user-facing check: say what failed, no traceback wall
        print(f"simulator check failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.write_marker:
        from .libero_env import GL_MARKER

        (Path(sys.prefix) / GL_MARKER).write_text(backend + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for run in results["runs"]:
            mode = "with rendering (2 cameras)" if run["render"] else "physics only"
            print(
                f"{mode:<28} create {run['create_s']:.2f} s, first reset {run['first_reset_s']:.2f} s, "
                f"reset {run['reset_s']:.2f} s, step {run['step_s'] * 1e3:.1f} ms"
            )
        print(f"MUJOCO_GL={backend}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
