"""Expert demonstrations as numpy arrays.

An :class:`Episode` keeps, per control step t (20 Hz-equivalent), the simulator snapshot (from which both
camera frames are re-rendered on demand: storing 2 x 224 x 224 x 3 bytes per step would need gigabytes for
a training set, re-rendering takes about a millisecond), the 8-D proprio, the expert's plan from that state
(its next 8 actions if it were left in control: the training target), and the action actually executed.
The executed action is the expert's plus injected noise, and now and then an *excursion*: a few steps of a
random full-speed translation while transporting, or, while aligning over the object, a few steps of a slow
sideways drift that now and then also closes the gripper on nothing (a missed grasp); and the release may come
late (the gripper kept shut a few more steps, going on down). They make the demonstrations visit off-nominal
states, and the labels there are the expert's way back (or its "let go now"). ``frames()`` returns
the rendered images as arrays.

Training samples are (frames at t, proprio at t, instruction, plan at t): OFT's action chunks of 8.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cli.common import ArgumentParser
from .expert import FINE_SPEED, expert_action, expert_plan
from .task import FINGER_OPEN, VIEWS, TabletopTask, TaskConfig

CHUNK_LEN = 8
#: dataset_statistics.json key of every test-bed checkpoint
UNNORM_KEY = "testbed"
ACTION_DIM = 7
PROPRIO_DIM = 8


@dataclass(frozen=True)
class Episode:
    """One demonstration of T steps.

    Attributes:
        seed: task seed (fixes the scene and the instruction).
        instruction: the task text.
        snapshots: (T, S) simulator state before each step (``TabletopTask.restore``).
        proprio: (T, 8) proprio before each step.
        plans: (T, 8, 7) the expert's next 8 actions from each state (``expert_plan``).
        executed: (T, 7) actions executed (the expert's action + noise, or an excursion).
        success: whether the demonstration ended in success.
    """

    seed: int
    instruction: str
    snapshots: np.ndarray
    proprio: np.ndarray
    plans: np.ndarray
    executed: np.ndarray
    success: bool

    def __len__(self) -> int:
        return len(self.plans)

    @property
    def actions(self) -> np.ndarray:
        """(T, 7) the expert's action in each visited state (the first row of each plan)."""
        return self.plans[:, 0]

    def action_chunk(self, t: int) -> np.ndarray:
        """The training target at step t: the expert's plan from that state, shape (8, 7)."""
        return self.plans[t]

    def frames(self, task_config: TaskConfig = TaskConfig(), steps: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Rendered frames, view -> (len(steps), H, W, 3) uint8 (all steps by default)."""
        task = TabletopTask(self.seed, task_config)
        steps = np.arange(len(self)) if steps is None else np.asarray(steps)
        out = {v: [] for v in VIEWS}
        for t in steps:
            task.restore(self.snapshots[t])
            for v, img in task.render().items():
                out[v].append(img)
        return {v: np.stack(imgs) for v, imgs in out.items()}


#: probability that a fine excursion (``collect_episode``) also closes the gripper: a missed grasp
MISSED_GRASP_SHARE = 0.4


def collect_episode(seed: int, noise: float, noise_seed: int, task_config: TaskConfig = TaskConfig(),
                    excursion_rate: float = 0.0, fine_excursion_rate: float = 0.0, late_release: float = 0.0) -> Episode:
    """Run the expert on task ``seed`` and record every visited state with the expert's plan from it.

    Executed actions get N(0, ``noise``) (action units) on the translation and yaw. With ``excursion_rate``
    > 0, each transport step (the expert moving faster than its fine-phase speed) starts with that
    probability an excursion: 3 to 10 steps of full-speed translation in a random direction (gripper and yaw
    still the expert's), after which the expert takes over again. With ``fine_excursion_rate`` > 0, each
    step of aligning over (or descending onto) the object with open fingers starts with that probability a
    fine excursion: 3 to 8 steps of sideways drift at 0.3 to 0.6 action units in a random direction (height
    and yaw still the expert's), 6 to 48 mm off, which in ``MISSED_GRASP_SHARE`` of the cases also closes
    the gripper: the expert then shows how to get back over the object, and how to reopen and rise after a
    missed grasp (states a policy reaches when its alignment is off, and an expert alone never visits). With
    probability ``late_release`` the demonstration's release comes 1 to 6 steps late: where the expert first
    lets go, the gripper stays shut while the tool point goes on down at fine speed, drifting sideways at up
    to 0.2 action units; each of those states is labelled with the expert's release. (A single state per
    demonstration would otherwise carry the "open" label, the episode ends with it.)
    """
    rng = np.random.default_rng(noise_seed)
    task = TabletopTask(seed, task_config)
    snaps, props, plans, executed = [], [], [], []
    excursion_left, direction, close = 0, np.zeros(3), False
    release_delay = int(rng.integers(1, 7)) if late_release > 0 and rng.random() < late_release else 0
    while not task.done:
        plan = expert_plan(task, CHUNK_LEN)
        e = plan[0].copy()
        coarse = float(np.linalg.norm(plan[0, 0:3])) > FINE_SPEED  # transport, not align / grasp / place
        aligning = not coarse and task.state.held < 0 and plan[0, 6] < 0 and task.state.finger >= FINGER_OPEN - 1e-9
        if excursion_left == 0 and coarse and excursion_rate > 0 and rng.random() < excursion_rate:
            excursion_left = int(rng.integers(3, 11))
            v = rng.normal(size=3) * [1.0, 1.0, 0.5]
            direction, close = v / np.linalg.norm(v), False
        elif excursion_left == 0 and aligning and fine_excursion_rate > 0 and rng.random() < fine_excursion_rate:
            excursion_left = int(rng.integers(3, 9))
            angle = rng.uniform(0.0, 2 * np.pi)
            direction = np.array([np.cos(angle), np.sin(angle), np.nan]) * rng.uniform(0.3, 0.6)
            close = bool(rng.random() < MISSED_GRASP_SHARE)
        if release_delay > 0 and task.state.held >= 0 and plan[0, 6] < 0:  # the expert lets go: not yet
            if excursion_left == 0:
                excursion_left = release_delay
                direction, close = np.array([*rng.uniform(-0.2, 0.2, size=2), -FINE_SPEED]), True
            release_delay = 0
        if excursion_left > 0:
            e[0:3] = np.where(np.isnan(direction), e[0:3], direction)  # nan: that axis stays the expert's
            if close:
                e[6] = 1.0
            excursion_left -= 1
        elif noise > 0:
            idx = [0, 1, 2, 5]  # translation and yaw
            e[idx] = np.clip(e[idx] + rng.normal(0.0, noise, size=4), -1.0, 1.0)
        snaps.append(task.snapshot())
        props.append(task.proprio())
        plans.append(plan)
        executed.append(e)
        task.step(e)
    return Episode(seed, task.instruction, np.stack(snaps), np.stack(props), np.stack(plans), np.stack(executed),
                   task.success)


def check_perturbations(excursion_rate: float, fine_excursion_rate: float, late_release: float) -> None:
    """Raise ValueError unless the perturbation rates of :func:`collect_episode` are in range."""
    for name, rate in (("excursion_rate", excursion_rate), ("fine_excursion_rate", fine_excursion_rate)):
        if not 0 <= rate <= 0.2:
            raise ValueError(f"{name}={rate} must lie in [0, 0.2] (probability per step)")
    if not 0 <= late_release <= 1:
        raise ValueError(f"late_release={late_release} must lie in [0, 1] (probability per demonstration)")


def generate(n_episodes: int, seed: int = 0, noise: float = 0.15, noise_free_fraction: float = 0.25,
             task_config: TaskConfig = TaskConfig(), progress: bool = False,
             excursion_rate: float = 0.0, fine_excursion_rate: float = 0.0, late_release: float = 0.0) -> list[Episode]:
    """``n_episodes`` successful demonstrations on task seeds drawn from ``seed`` (failed ones are skipped).

    Task seeds are ``1_000_000 + seed * 100_000 + i``: disjoint from the evaluation seeds (below 1_000_000, ``EvalConfig``).
    A fraction ``noise_free_fraction`` of the episodes is recorded without noise and without excursions.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes={n_episodes} must be >= 1")
    if not 0 <= noise <= 1:
        raise ValueError(f"noise={noise} must lie in [0, 1] (action units)")
    check_perturbations(excursion_rate, fine_excursion_rate, late_release)
    if not 0 <= seed < 1000:
        raise ValueError(f"seed={seed} must lie in [0, 1000)")
    episodes: list[Episode] = []
    i = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_episodes, desc="expert episodes", unit="ep")
    n_clean = int(round(noise_free_fraction * n_episodes))
    while len(episodes) < n_episodes:
        task_seed = 1_000_000 + seed * 100_000 + i
        clean = len(episodes) < n_clean
        ep = collect_episode(task_seed, 0.0 if clean else noise, noise_seed=task_seed, task_config=task_config,
                             excursion_rate=0.0 if clean else excursion_rate,
                             fine_excursion_rate=0.0 if clean else fine_excursion_rate,
                             late_release=0.0 if clean else late_release)
        i += 1
        if ep.success:
            episodes.append(ep)
            if bar is not None:
                bar.update(1)
        if i > 3 * n_episodes + 10:
            raise RuntimeError(f"the expert failed on most seeds ({i} tried, {len(episodes)} succeeded): noise={noise} too high?")
    if bar is not None:
        bar.close()
    return episodes


def dataset_statistics(episodes: list[Episode]) -> dict:
    """OFT-style statistics (q01, q99, min, max, mean, std, mask) of actions and proprio."""

    def stats(x: np.ndarray, mask: list[bool]) -> dict:
        return {
            "mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "max": x.max(0).tolist(), "min": x.min(0).tolist(),
            "q01": np.quantile(x, 0.01, axis=0).tolist(), "q99": np.quantile(x, 0.99, axis=0).tolist(),
            "mask": mask,
        }

    actions = np.concatenate([e.actions for e in episodes])
    proprio = np.concatenate([e.proprio for e in episodes])
    return {
        "action": stats(actions, [True] * 6 + [False]),
        "proprio": stats(proprio, [True] * PROPRIO_DIM),
        "num_transitions": int(len(actions)),
        "num_trajectories": len(episodes),
    }


def save_episodes(path: str | Path, episodes: list[Episode]) -> Path:
    """Write episodes to one .npz (arrays ``ep{i}_*`` + seeds, instructions, success)."""
    arrays: dict[str, np.ndarray] = {
        "seeds": np.array([e.seed for e in episodes], np.int64),
        "instructions": np.array([e.instruction for e in episodes]),
        "success": np.array([e.success for e in episodes]),
    }
    for i, e in enumerate(episodes):
        arrays[f"ep{i}_snapshots"] = e.snapshots
        arrays[f"ep{i}_proprio"] = e.proprio
        arrays[f"ep{i}_plans"] = e.plans
        arrays[f"ep{i}_executed"] = e.executed
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def load_episodes(path: str | Path) -> list[Episode]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"episode file not found: {path} (write one with save_episodes or `--out`)")
    with np.load(path, allow_pickle=False) as z:
        return [
            Episode(int(s), str(ins), z[f"ep{i}_snapshots"], z[f"ep{i}_proprio"], z[f"ep{i}_plans"],
                    z[f"ep{i}_executed"], bool(ok))
            for i, (s, ins, ok) in enumerate(zip(z["seeds"], z["instructions"], z["success"]))
        ]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description="Generate expert demonstrations of the test-bed task as a .npz file "
        "(snapshots, proprio, the expert's 8-step plans, executed actions; frames are re-rendered from snapshots)."
    )
    parser.add_argument("--episodes", type=int, default=100, help="number of successful episodes (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="data seed, picks the task seeds (default 0)")
    parser.add_argument("--noise", type=float, default=0.15, help="std of the translation and yaw noise injected into executed actions")
    parser.add_argument("--excursion-rate", type=float, default=0.0,
                        help="probability per transport step of starting a random full-speed excursion (default 0)")
    parser.add_argument("--fine-excursion-rate", type=float, default=0.0,
                        help="probability per aligning step of starting a slow sideways drift, sometimes with a missed "
                        "grasp (default 0)")
    parser.add_argument("--late-release", type=float, default=0.0,
                        help="probability per demonstration that the release comes 1-6 steps late (default 0)")
    parser.add_argument("--out", required=True, help="output .npz path")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not out.parent.is_dir() or out.is_dir():  # checked before minutes of generation, not after
        print(f"error: --out={args.out}: " + ("a directory" if out.is_dir() else f"folder {str(out.parent)!r} does not exist"),
              file=sys.stderr)
        return 2
    try:
        eps = generate(args.episodes, args.seed, args.noise, progress=True, excursion_rate=args.excursion_rate,
                       fine_excursion_rate=args.fine_excursion_rate, late_release=args.late_release)
        save_episodes(args.out, eps)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    steps = sum(len(e) for e in eps)
    print(f"wrote {len(eps)} episodes ({steps} steps) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
