"""How many torch threads a process of the command line uses, and why.

torch's default is one intra-op thread per core. The simulator's rounds are many small kernels,
and on a machine whose cores are busy with other jobs (or with the other ranks of ``sasg launch``
on the same node) those threads wait for each other at every kernel: on a loaded 2-core machine
the default comparison ran 3.5–5x slower in wall time with the default than with one thread, and
with identical numbers. So the command line and the examples use **one thread per process**
unless told otherwise, in this order:

1. ``--threads N`` (the flag),
2. ``SASG_THREADS=N`` (the environment),
3. ``OMP_NUM_THREADS=N``, when set (torch reads it at start-up; it is respected, never overridden),
4. one thread.

The choice is made once per process by the command line (never by library objects: importing
``sasg`` or building a ``Simulator`` changes no thread setting) and recorded in the run's
``config.json`` and ``report.md`` as ``threads``.
"""

from __future__ import annotations

import os

ENV = "SASG_THREADS"
# Exported beside OMP_NUM_THREADS for processes started from here (``sasg launch``'s ranks, under
# torchrun): "N:SOURCE", where the parent's count came from. A rank whose OMP_NUM_THREADS is still
# N reports that source, not OMP_NUM_THREADS, which it got from its parent, not from the user.
INHERITED = "SASG_THREADS_FROM"
# One process never profits from more threads than a large machine has cores; a bound catches typos.
MAX_THREADS = 1024


def parse_threads(text, source: str) -> int:
    """A thread count from ``source`` (a flag or an environment variable), or a ``ValueError``
    naming the source and the fix."""
    from .validation import parse_integer

    return parse_integer(str(text).strip(), source, ge=1, le=MAX_THREADS, fix=f"e.g. {source}=1")


def choose_threads(flag: int | None = None, environ=None) -> tuple[int, str]:
    """``(threads, where the number came from)``: the flag, ``SASG_THREADS``, ``OMP_NUM_THREADS``,
    else one (see the module docstring)."""
    env = os.environ if environ is None else environ
    if flag is not None:
        return parse_threads(flag, "--threads"), "--threads"
    for name in (ENV, "OMP_NUM_THREADS"):
        if env.get(name, "").strip():
            n = parse_threads(env[name], name)
            count, _, source = env.get(INHERITED, "").partition(":")
            if name == "OMP_NUM_THREADS" and source and count == str(n):
                return n, source
            return n, name
    return 1, "default (one per process)"


def use_threads(flag: int | None = None) -> dict:
    """Set torch's intra-op threads for this process as :func:`choose_threads` says, and export
    the count as ``OMP_NUM_THREADS`` so processes started from here (``sasg launch``'s workers)
    inherit it, and its source as ``SASG_THREADS_FROM`` so they report it. Returns ``{"threads": n, "threads_from": source}`` for the run's config."""
    import torch

    n, source = choose_threads(flag)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ[INHERITED] = f"{n}:{source}"
    return {"threads": n, "threads_from": source}
