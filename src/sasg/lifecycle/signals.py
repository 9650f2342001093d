"""The signals that stop a run, and a stop that is not lost on the way.

SIGTERM (a scheduler's kill, torchrun stopping its workers) and SIGHUP (a closed terminal) become
``SystemExit`` (:func:`exit_on_sigterm`), so a run stops as on Ctrl-C and its staging folder is
cleaned up (:class:`sasg.lifecycle.rundir.staged_run_dir`); a stop whose exception Python dropped
is raised again after the round (:func:`stop_if_signalled`, :class:`StopCheck`). A few renames
that must happen together hold the signals back meanwhile (:class:`signals_held`).
"""

from __future__ import annotations

import signal


def exit_on_sigterm() -> None:
    """Turn SIGTERM (a scheduler's kill, torchrun stopping its workers) and SIGHUP (the terminal
    closed, an ssh session dropped) into ``SystemExit``, so that a staging folder is cleaned up as
    on Ctrl-C instead of being left behind. The exit code is 128 + the signal's number, as a shell
    reports a process killed by it. A SIGHUP already ignored (``nohup``) stays ignored."""

    def handler(signum, frame):
        global _stop_code
        _stop_code = 128 + signum
        raise SystemExit(_stop_code)

    signal.signal(signal.SIGTERM, handler)
    hangup = getattr(signal, "SIGHUP", None)  # not on Windows
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        signal.signal(hangup, handler)


_stop_code: int | None = None  # 128 + the signal's number, once exit_on_sigterm's handler ran


def stop_if_signalled() -> None:
    """Raise the ``SystemExit`` of a SIGTERM or SIGHUP that came earlier again.

    Python runs a signal's handler wherever the main thread is, and an exception raised inside a
    finalizer (a ``__del__``, a weakref callback during garbage collection) is printed as
    "Exception ignored" and dropped: a signal landing there would be lost and the run would go on
    to its end. Called after every round (:class:`StopCheck`) and before a staged folder is moved
    into place, it makes such a signal stop the run within a round."""
    if _stop_code is not None:
        raise SystemExit(_stop_code)


def stop_requested() -> bool:
    """A SIGTERM or SIGHUP came (its ``SystemExit`` may have been dropped on the way)."""
    return _stop_code is not None


class StopCheck:
    """A watcher (see :mod:`sasg.report.live`) that calls :func:`stop_if_signalled` after every
    round of a run."""

    def __call__(self, sim, label: str) -> None:
        stop_if_signalled()

    def close(self) -> None:
        pass


class signals_held:
    """Hold back SIGTERM, SIGHUP and SIGINT over a few renames that must happen together; a
    signal that came meanwhile is acted on right after."""

    def __enter__(self):
        self._sigs = {getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, n)}
        self._old = None
        if hasattr(signal, "pthread_sigmask"):
            self._old = signal.pthread_sigmask(signal.SIG_BLOCK, self._sigs)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old)
