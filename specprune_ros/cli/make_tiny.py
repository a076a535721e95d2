"""specprune-make-tiny: write a random-weight checkpoint in the released OpenVLA-OFT layout."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..core.tiny import SIZES, make_tiny_checkpoint
from .common import ArgumentParser, run

PROG = "specprune-make-tiny"


def main_args(argv: list[str]) -> int:
    p = ArgumentParser(
        prog=PROG,
        description="Write a random-weight checkpoint laid out like the released OpenVLA-OFT ones (config.json with "
        "timm_overrides, safetensors shards + index, dataset_statistics.json with key 'tiny_sim', action head and "
        "proprio projector .pt files, tokenizer). 'tiny' is for tests and the demo, 'mid' for CPU benchmarks, "
        "'full' has the real 7B shapes (about 30 GB in fp32).",
    )
    p.add_argument("out_dir", help="directory to create")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny", help="model size (default: tiny)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing checkpoint directory (one with a config.json; other folders are never replaced)")
    args = p.parse_args(argv)
    if not args.out_dir.strip():
        raise ValueError("out_dir is empty")
    out = Path(args.out_dir)
    cwd = Path.cwd().resolve()
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        raise ValueError(f"out_dir {args.out_dir!r} is the current directory or one above it; name a new directory")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not args.force:
            raise ValueError(f"{out} exists and is not empty; pass --force to replace it")
        if not (out / "config.json").is_file():
            raise ValueError(f"{out} is not empty and not a checkpoint directory (no config.json): not replacing it")
    # written beside the target first: a failed write leaves the old directory as it was
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.absolute().parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; a checkpoint is as readable as any new folder
        make_tiny_checkpoint(staging, seed=args.seed, size=args.size)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(main_args, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
