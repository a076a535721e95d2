"""Shared command-line plumbing: flags derived from the config dataclasses, error handling, JSON."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from typing import Callable, Sequence

from ..core.config import ConfigError, PolicyConfig

_NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--opt -0.1,0.2`` -> ``--opt=-0.1,0.2`` so argparse does not take the value for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and "=" not in tok and i + 1 < len(argv) and _NEGATIVE_VALUE.match(argv[i + 1]):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the conventions every tool here follows: ``--opt=value`` everywhere, so a switch takes one
    too (``--flip=false`` is ``--no-flip``, ``--no-progress=true`` is ``--no-progress``; an option that takes a
    value, such as ``specprune-bench --json[=OUT]``, keeps it), and ``--opt -0.1,0.2`` is ``--opt=-0.1,0.2``."""

    def parse_known_args(self, args=None, namespace=None):
        args = join_negative_values(list(sys.argv[1:] if args is None else args))
        return super().parse_known_args(self._flag_values(args), namespace)

    def _flag_values(self, args: list[str]) -> list[str]:
        # option string -> (the option meaning true, the option meaning false or None: leave it out)
        flags: dict[str, tuple[str | None, str | None]] = {}
        for action in self._actions:
            if isinstance(action, argparse.BooleanOptionalAction):
                for s in action.option_strings:
                    if s.startswith("--no-"):
                        flags[s] = (s, "--" + s[5:])
                    else:
                        flags[s] = (s, "--no-" + s[2:])
            elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                for s in action.option_strings:
                    flags[s] = (s, None)
        out: list[str] = []
        for i, tok in enumerate(args):
            if tok == "--":
                return out + args[i:]
            name, sep, value = tok.partition("=")
            if not sep or name not in flags:
                out.append(tok)
                continue
            on, off = flags[name]
            v = value.strip().lower()
            if v not in _TRUE + _FALSE:
                self.error(f"argument {name}: expected true or false, got {value!r}")
            chosen = on if v in _TRUE else off
            if chosen is not None:
                out.append(chosen)
        return out


def parse_floats(text: str) -> list[float]:
    """``"0.1,-0.2, 3"`` -> [0.1, -0.2, 3.0] with a clear error; an empty field (``1,,2``) is an error, not
    skipped (the numbers after it would shift by one place)."""
    fields = text.split(",")
    empty = [i + 1 for i, x in enumerate(fields) if not x.strip()]
    if empty:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r} (field {empty[0]} is empty)")
    try:
        return [float(x) for x in fields]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_policy_args(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per PolicyConfig field, with the field's documentation as help."""
    group = parser.add_argument_group("policy (PolicyConfig)")
    for name, (type_name, default, doc) in PolicyConfig.fields_doc().items():
        if name in skip:
            continue
        help_text = f"{doc} (default: {default if default not in ('', None) else 'none'})"
        if type_name == "bool":
            group.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif type_name.startswith("tuple"):
            group.add_argument(_flag(name), default=None, metavar="A,B", help=help_text)
        else:
            conv = {"int": int, "float": float}.get(type_name, str)
            group.add_argument(_flag(name), type=conv, default=None, help=help_text)


def policy_config_from_args(args: argparse.Namespace, **overrides) -> PolicyConfig:
    values = {}
    for name in PolicyConfig.fields_doc():
        value = getattr(args, name, None)
        if value is None:
            continue
        if name == "views":
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        values[name] = value
    values.update(overrides)
    return PolicyConfig.from_mapping(values)


def user_errors() -> tuple[type[BaseException], ...]:
    from ..core.checkpoint import CheckpointError
    from ..core.types import InputError

    return (ConfigError, CheckpointError, InputError, OSError, ValueError, FloatingPointError)


def interruptible() -> None:
    """Take Ctrl-C (SIGINT) as KeyboardInterrupt even when it was inherited ignored: a shell without job
    control starts background commands (``cmd &``) with SIGINT ignored, and children inherit that, so the
    tools and the nodes they start would not stop on the SIGINT ``rosenv.stop_process`` sends."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None, prog: str) -> int:
    """Run ``main`` with Unix conventions: user errors -> one line on stderr and exit 2; Ctrl-C -> 130."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    interruptible()
    argv = list(sys.argv[1:] if argv is None else argv)  # ArgumentParser joins negative values
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except user_errors() as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
