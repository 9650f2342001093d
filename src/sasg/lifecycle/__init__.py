"""A run's life on disk: its folder, the lock on it, the signals that stop it, its checkpoints.

- :mod:`sasg.lifecycle.rundir` — the run folder, staged in a hidden folder and moved into place
  whole (or not at all);
- :mod:`sasg.lifecycle.destination` — which ``--out`` a run may write to, and which folder is a
  run folder (what ``--overwrite`` may replace);
- :mod:`sasg.lifecycle.lock` — who is writing a run folder: the lock file beside it and the owner
  record of a staging folder;
- :mod:`sasg.lifecycle.signals` — SIGTERM and SIGHUP stop a run as Ctrl-C does, and a stop is
  never lost on the way;
- :mod:`sasg.lifecycle.checkpoint` — checkpoints (one file per rank of ``sasg launch``, per
  algorithm of ``sasg run``/``sasg compare``), written atomically, and the point to resume from.

What a run folder holds (summary, metrics, plots, report) is :mod:`sasg.report`'s. Nothing here
is imported by this package's ``__init__``: :mod:`~sasg.lifecycle.checkpoint` needs torch, the
others do not.
"""
