"""specprune-infer: one-shot inference from image files, printing the action chunk."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..core.images import decode_image_bytes
from ..core.policy import build_policy
from ..core.types import Observation
from .common import ArgumentParser, add_policy_args, parse_floats, policy_config_from_args, print_json, run

PROG = "specprune-infer"


def read_rgb(path: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a PNG or JPEG file (8 bits per channel; read as bytes, any file name)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    return decode_image_bytes(data, f"image {path!r}")


def parse_images(items: list[str]) -> dict[str, np.ndarray]:
    images = {}
    for item in items:
        view, sep, path = item.partition("=")
        if not sep or not view or not path:
            raise ValueError(f"--image expects VIEW=PATH (e.g. primary=frame.png), got {item!r}")
        if view in images:
            raise ValueError(f"--image gives view {view!r} twice; give one image per view")
        images[view] = read_rgb(path)
    return images


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Run an OpenVLA-OFT checkpoint once on image files and print the predicted action chunk "
        "(un-normalized, one row per control step).",
        epilog="Example: specprune-infer --checkpoint=ckpt --instruction='put the bowl on the plate' "
        "--image=primary=a.png --image=wrist=b.png --proprio=-0.1,0.2,0,0,0,0,0.03,-0.03 --json",
    )
    p.add_argument("--instruction", required=True, help="the task, e.g. 'put the bowl on the plate'")
    p.add_argument("--image", action="append", default=[], metavar="VIEW=PATH", help="camera image per view (PNG/JPEG, 8 bits per channel; one per view)")
    p.add_argument("--proprio", type=parse_floats, default=None, metavar="V1,V2,...", help="proprio state, comma-separated")
    p.add_argument("--json", action="store_true", help="print one JSON object with actions and stats")
    add_policy_args(p)
    return p


def main_args(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    config = policy_config_from_args(args)
    images = parse_images(args.image)
    extra = sorted(set(images) - set(config.views))
    if extra:  # a typo in a view name would otherwise be ignored
        raise ValueError(f"--image names view(s) {extra} that the policy does not take; its views: {list(config.views)}")
    policy = build_policy(config)
    proprio = np.asarray(args.proprio, dtype=np.float64) if args.proprio is not None else None
    chunk = policy.infer(Observation(images=images, proprio=proprio, instruction=args.instruction))
    if args.json:
        out = chunk.to_dict()
        out["unnorm_key"] = policy.unnorm_key
        print_json(out)
        return 0
    s = chunk.stats
    print(f"{chunk.actions.shape[0]} steps x {chunk.actions.shape[1]} dims, dt={chunk.dt:.3f}s, preset={s.preset}, mode={s.mode}")
    for i, row in enumerate(chunk.actions):
        print(f"  {i:2d}: " + " ".join(f"{v:+.4f}" for v in row))
    print("tokens: total {}, visual kept {} ({})".format(s.total_tokens, sum(s.kept_per_view.values()), ", ".join(f"{k} {v}" for k, v in s.kept_per_view.items())))
    print("timings (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in s.timings_ms.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(main_args, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
