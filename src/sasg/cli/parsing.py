"""argparse for every command: parsers whose errors are one line naming the fix, and the types
of the training flags (numbers, comma-separated lists, per-algorithm values such as
``--density 0.01,sasg=0.05``), each turning a bad value into such a line.

Ranges are :meth:`sasg.config.RunConfig.validate`'s; the types only read the text.
"""

from __future__ import annotations

import argparse

from .config_args import PerAlgorithm


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line that names the problem and the fix, and flags are
    never abbreviated (``--nproc`` must not silently become ``--nproc-per-node``, nor a prefix
    slip through to the workers of ``sasg launch``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class CommandParser(OneLineParser):
    """The parser of one sub-command (``sasg compare``, ...). It gets every token after the
    command's name, so a token it does not recognize is an error no other parser could take:
    reported here, naming this command and its help, rather than by the top-level parser."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def numeric(kind):
    """An argparse type: the text as an ``int`` or a ``float`` (ranges: RunConfig.validate)."""
    from ..validation import argument, parse_integer, parse_number

    return argument(parse_integer if kind is int else parse_number)


def items(text: str, example: str) -> list[str]:
    """The entries of a comma-separated list; an empty entry (``1,,2``, ``,``) is a typo."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty entry; give a comma-separated list such as {example}")
    return items


def algo_list(text: str) -> tuple[str, ...]:
    return tuple(a.lower() for a in items(text, "sgd,sasg"))


def codec_arg(text: str):
    """A codec name, or per-algorithm codecs ``sparse=rice+sign,sasg=rice+sign`` (a bare name among
    them is the codec of the algorithms not named)."""
    if "=" not in text:
        return text.strip().lower()
    out = PerAlgorithm()
    for item in items(text, "sparse=rice+sign,sasg=rice+sign"):
        name, sep, value = (p.strip().lower() for p in item.partition("="))
        key = name if sep else None
        if (sep and not name) or not (value if sep else name):
            raise argparse.ArgumentTypeError(f"{item!r}: write ALGO=CODEC, e.g. sasg=rice+sign")
        if key in out:
            raise argparse.ArgumentTypeError(f"{text!r} gives {'the shared codec' if key is None else key} twice")
        out[key] = value if sep else name
    return out


def tensor_policy(text: str) -> str:
    from ..core.tensor_policy import check_tensor_policy

    try:
        return check_tensor_policy(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def knob(kind, example: str = "sasg=0.8,lasg=0.2"):
    """A number, or per-algorithm values such as ``example`` (a bare number among them is the
    value of the algorithms not named): ``--threshold-scale 1,sasg=0.8``."""
    number = numeric(kind) if kind in (int, float) else kind  # or a parser of its own (window_sum)

    def parse(text: str):
        if "=" not in text:
            return number(text)
        out = PerAlgorithm()
        for item in items(text, example):
            name, sep, value = (p.strip() for p in item.partition("="))
            key = name.lower() if sep else None
            if sep and not name:
                raise argparse.ArgumentTypeError(
                    f"{item!r} names no algorithm; write ALGO=VALUE, e.g. {example.split(',')[0]}")
            if key in out:
                raise argparse.ArgumentTypeError(f"{text!r} gives {'the shared value' if key is None else key} twice")
            out[key] = number(value if sep else item)
        return out

    parse.__name__ = kind.__name__
    return parse


def window_sum(text: str) -> str:
    """``D-1`` or ``D`` (any case), normalized."""
    from ..core.triggers.lazy import check_window_sum

    try:
        return check_window_sum(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither D-1 nor D") from None


def aggregate(text: str) -> str:
    """``last`` or ``senders`` (any case), normalized."""
    from ..core.aggregate import check_aggregate

    try:
        return check_aggregate(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither last nor senders") from None


def float_list(text: str) -> tuple[float, ...]:
    parse = numeric(float)
    return tuple(parse(t) for t in items(text, "20,30"))


def int_list(text: str) -> tuple[int, ...]:
    parse = numeric(int)
    return tuple(parse(t) for t in items(text, "1,19,31"))
