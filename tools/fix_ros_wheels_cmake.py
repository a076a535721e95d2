"""Point the ROS 2 PyPI wheels' exported CMake files at this virtual environment.

The ``ros-*`` wheels ship CMake export files (``<venv>/share/<pkg>/cmake/*.cmake``) written on the
wheel builder, with that machine's Python and NumPy include directories hard-coded, e.g.
``/opt/python/cp311-cp311/include/python3.11`` and
``/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include``. A colcon build of a
message package against the wheels links the generated Python extensions through those targets and
fails on the missing directories. This tool rewrites them to the running interpreter's include
directory and ``numpy.get_include()``.

Idempotent: a second run finds nothing to change. Run it with the virtual environment's Python:

    .venv/bin/python tools/fix_ros_wheels_cmake.py            # rewrite in place
    .venv/bin/python tools/fix_ros_wheels_cmake.py --check    # exit 1 if something would change
"""
from __future__ import annotations

import argparse
import re
import sys
import sysconfig
from pathlib import Path

# A builder path: /opt/python/<tag>/include/python3.X or /opt/python/<tag>/.../numpy/_core/include
_PYTHON_INCLUDE = re.compile(r"/opt/python/[^;\"\s]+?/include/python3\.\d+(?![\w.])")
_NUMPY_INCLUDE = re.compile(r"/opt/python/[^;\"\s]+?/site-packages/numpy/(?:_core|core)/include")


def rewrite(text: str, python_include: str, numpy_include: str) -> str:
    """Return ``text`` with the builder's include directories replaced (NumPy first: it is longer)."""
    text = _NUMPY_INCLUDE.sub(numpy_include, text)
    return _PYTHON_INCLUDE.sub(python_include, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default=sys.prefix,
                        help="environment whose share/*/cmake/*.cmake files to fix (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if any file still names the builder's paths")
    args = parser.parse_args(argv)

    try:
        import numpy
    except ImportError:
        print("error: numpy is not importable from this Python; run this tool with the virtual "
              "environment's interpreter (.venv/bin/python)", file=sys.stderr)
        return 2
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    if not Path(python_include, "Python.h").is_file():
        print(f"error: {python_include}/Python.h is missing; install this Python's development "
              "headers (e.g. apt-get install python3-dev)", file=sys.stderr)
        return 2

    share = Path(args.prefix) / "share"
    if not share.is_dir():
        print(f"error: {share} does not exist; is --prefix a virtual environment with the ROS 2 wheels?",
              file=sys.stderr)
        return 2

    changed = []
    for path in sorted(share.glob("*/cmake/*.cmake")):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        new = rewrite(text, python_include, numpy_include)
        if new != text:
            changed.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8", errors="surrogateescape")
    verb = "would rewrite" if args.check else "rewrote"
    print(f"{verb} {len(changed)} CMake file(s) under {share} "
          f"(Python include {python_include}, NumPy include {numpy_include})")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
