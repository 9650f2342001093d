"""Checks of user-given settings, with one error format for all of them::

    NAME must be WHAT, got VALUE; FIX

e.g. ``lr must be a finite number >= 0, got -1; e.g. lr=0.05``. Each check returns the value it
accepted (normalized: a choice lower-cased, a numpy integer as ``int``) and raises ``error``
(``ValueError`` unless the caller passes its own subclass, such as ``sasg.config.ConfigError``,
or ``argparse.ArgumentTypeError`` for a flag's type) on anything else. ``name=None`` leaves the
name out (``must be ...``), for argparse, which puts ``argument --flag:`` in front.

Ranges: ``gt``/``ge`` and ``lt``/``le`` bound what a value means (momentum in [0, 1)); ``limit``
is a sanity bound far above any real value (lr <= 1e4), refused with its own message and ``why``.
This module imports nothing of sasg: everything else may use it.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Callable, Iterable, NoReturn

# Seeds as numpy takes them; every worker's generator seed derived from one stays in range.
MAX_SEED = 2**32 - 1
# Rounds of one run (iterations, or epochs x rounds per epoch): 1e8 is ~1000 x the paper's longest
# run (ResNet-18, 200 epochs x 390 rounds), over a day even at 1 ms a round, and rounds.csv keeps a
# row per round. Also bounds --lr-decay-epochs, the optimizer's threshold_lr_lag and (in sasg
# launch) --checkpoint-every.
MAX_ROUNDS = 10**8


class ConfigError(ValueError):
    """A bad setting; the message says which one and how to fix it (``sasg.config.ConfigError``)."""


def message(name: str | None, what: str, value, fix: str | None = None, *, got: str | None = None) -> str:
    """``NAME must be WHAT, got VALUE; FIX`` (``got`` replaces ``repr(value)`` where given)."""
    text = f"{name} must be {what}" if name else f"must be {what}"
    text += f", got {value!r}" if got is None else f", got {got}"
    return f"{text}; {fix}" if fix else text


def fail(name: str | None, what: str, value, fix: str | None = None, *, error: type = ValueError,
         got: str | None = None) -> NoReturn:
    """Raise ``error`` with :func:`message`."""
    raise error(message(name, what, value, fix, got=got))


def bound(x) -> str:
    """A bound as a person writes it: an int as is (100000), a float short (1e+06, 0.5)."""
    return str(x) if isinstance(x, Integral) else f"{x:g}"


def _interval(gt, ge, lt, le) -> str:
    low = f"({bound(gt)}" if gt is not None else f"[{bound(ge)}"
    high = f"{bound(lt)})" if lt is not None else f"{bound(le)}]"
    return f"in {low}, {high}"


def _at_most(value, name, limit, unit, why, fix, error, got) -> None:
    if limit is not None and value > limit:
        what = f"at most {bound(limit)}" + (f" {unit}" if unit else "") + (f" ({why})" if why else "")
        fail(name, what, value, fix, error=error, got=got)


def number(value, name: str | None, *, gt=None, ge=None, lt=None, le=None, limit=None, why: str | None = None,
           unit: str | None = None, fix: str | None = None, error: type = ValueError, got: str | None = None):
    """A finite real number (bools refused) within the bounds given; returned as a plain ``int``
    or ``float`` (a numpy float becomes ``float``)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not isinstance(value, (int, float)) and ok:
        value = float(value)
    ok = ok and (gt is None or value > gt) and (ge is None or value >= ge)
    ok = ok and (lt is None or value < lt) and (le is None or value <= le)
    if not ok:
        of = f" of {unit}" if unit else ""
        if (gt is not None or ge is not None) and (lt is not None or le is not None):
            what = f"a number{of} {_interval(gt, ge, lt, le)}"
        else:
            what = f"a finite number{of}" + "".join(f" {op} {bound(b)}" for op, b in
                                                 ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None)
        fail(name, what, value, fix, error=error, got=got)
    _at_most(value, name, limit, unit, why, fix, error, got)
    return value


def integer(value, name: str | None, *, ge=None, le=None, limit=None, why: str | None = None,
            unit: str | None = None, fix: str | None = None, error: type = ValueError, got: str | None = None) -> int:
    """An integer (any ``numbers.Integral``; bools refused) within the bounds given, as ``int``."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        value = int(value)
        if (ge is None or value >= ge) and (le is None or value <= le):
            _at_most(value, name, limit, unit, why, fix, error, got)
            return value
    what = "an integer" + (f" number of {unit}" if unit else "")
    if ge is not None and le is not None:
        what += f" from {bound(ge)} to {bound(le)}"
    elif ge is not None:
        what += f" >= {bound(ge)}"
    elif le is not None:
        what += f" <= {bound(le)}"
    fail(name, what, value, fix, error=error, got=got)


def optional(check: Callable, value, *args, **kwargs):
    """``None`` as it is, anything else through ``check``."""
    return None if value is None else check(value, *args, **kwargs)


def choice(value, name: str | None, choices: Iterable[str], *, fix: str | None = None,
           error: type = ValueError) -> str:
    """One of ``choices``, matched after stripping and lower-casing (``" CPU "`` is ``cpu``);
    returned normalized."""
    choices = tuple(choices)
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in choices:
        fail(name, "one of " + ", ".join(choices), value, fix, error=error)
    return key


def flag(value, name: str | None, *, fix: str | None = None, error: type = ValueError) -> bool:
    """``True`` or ``False`` (not 0/1, not ``"yes"``)."""
    if not isinstance(value, bool):
        fail(name, "True or False", value, fix, error=error)
    return value


def seed(value, name: str | None = "seed", *, fix: str | None = "e.g. seed=0", error: type = ValueError) -> int:
    """A seed numpy takes: an integer from 0 to :data:`MAX_SEED` (2**32 - 1)."""
    return integer(value, name, ge=0, le=MAX_SEED, fix=fix, error=error)


def lr(value, name: str | None = "lr", *, fix: str | None = "e.g. lr=0.05", error: type = ValueError) -> float:
    """A learning rate: a finite number >= 0 (a scheduler may take it down to 0), as a ``float``."""
    return float(number(value, name, ge=0, fix=fix, error=error))


# ----- text (command-line values) ----------------------------------------------------------------
def parse_integer(text: str, name: str | None = None, *, error: type = ValueError, **bounds) -> int:
    """``text`` as an integer (``"2.5"`` is refused), then :func:`integer` with ``bounds``."""
    try:
        value = int(text)
    except ValueError:
        integer(text, name, error=error, **bounds)  # refused, with what the bounds ask for
    return integer(value, name, error=error, got=str(text).strip(), **bounds) if bounds else value


def parse_number(text: str, name: str | None = None, *, error: type = ValueError, **bounds) -> float:
    """``text`` as a float (``nan`` and ``inf`` included, unless ``bounds`` are given: then
    :func:`number` checks it)."""
    try:
        value = float(text)
    except ValueError:
        if bounds:
            number(text, name, error=error, **bounds)  # refused, with what the bounds ask for
        fail(name, "a number", text, error=error)
    return number(value, name, error=error, got=str(text).strip(), **bounds) if bounds else value


def argument(parse: Callable, **bounds) -> Callable[[str], object]:
    """An argparse ``type=``: ``parse`` (:func:`parse_integer`, :func:`parse_number`) with
    ``bounds``, raising ``argparse.ArgumentTypeError`` (argparse prefixes ``argument --flag:``)."""
    import argparse

    def convert(text: str):
        return parse(text, None, error=argparse.ArgumentTypeError, **bounds)

    convert.__name__ = "int" if parse is parse_integer else "float"
    return convert
