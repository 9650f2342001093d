"""Heartbeats between the ranks of a run: a hung rank stops the others in about a minute.

Why: a rank that *dies* closes its sockets, and the others fail at their next collective at once.
A rank that *hangs* (stopped with SIGSTOP, a stuck driver, a frozen machine) keeps its sockets
open, and the others would wait in their next collective for the whole ``--timeout``; a
collective timeout cannot be short either, as it must cover the longest legitimate wait (rank 0
evaluating or writing the run folder while the others sit in a barrier).

How: every rank runs a daemon thread that, every ``interval`` seconds, adds 1 to its own counter
in the c10d store the process group already uses, and reads the other ranks' counters. The thread
beats whatever the main thread does (training, evaluating, waiting in a barrier), so a counter
stands still only when its whole process is not running. When one has not moved for ``timeout``
seconds, the thread prints one line naming that rank and ends its own process at once with
``os._exit`` (the main thread may be blocked inside a collective; torchrun then stops the rest).
A rank that finishes its run marks its counter finished first: finished ranks are never reported,
so ranks that leave at slightly different times raise no alarm.

Why this store: it already exists, so nothing new to configure, and under torchrun it is hosted
by the agent (the ``sasg launch`` process), so it keeps answering while any rank is stopped. The
thread works on a *clone* of it (its own connection), so a store call of the main thread that
waits (e.g. NCCL's lazy setup waiting on a peer) never holds up the beats. If the store fails
(the agent is gone: the workers get SIGTERM anyway), the thread ends quietly and ``--timeout``
remains the bound.

Tuning: ``--heartbeat-timeout SECONDS`` (default 60; 0 turns heartbeats off). A hung rank is
reported between ``timeout`` and ``timeout + 2 * interval`` seconds after it stopped, with
``interval = min(1 s, timeout / 10)``. Lower finds a hang sooner; keep it well above the longest
time a healthy process can be frozen as a whole (heavy swapping, a debugger, a suspended VM).
Numbers and determinism are unaffected: the thread touches only the store (no tensors, no RNG).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta

DEFAULT_TIMEOUT_S = 60.0
PREFIX = "sasg/heartbeat/"
# Added to a rank's counter when it finishes: a counter at or above it is a finished rank.
FINISHED = 1 << 60


def _hung(rank: int, timeout: float) -> None:
    print(f"sasg: error: rank {rank} has not answered for {timeout:g} s (hung or stopped); stopping this rank",
          file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def process_group_store():
    """The c10d store of the default process group. torch has no public accessor for it (2.13):
    this is the one place that uses the private one."""
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


class Heartbeat:
    """The beating and watching thread of one rank (see the module's docstring)."""

    def __init__(self, store, rank: int, world_size: int, timeout: float = DEFAULT_TIMEOUT_S,
                 on_hung=_hung, interval: float | None = None):
        self.store, self.rank, self.timeout, self.on_hung = store, rank, float(timeout), on_hung
        self.interval = min(1.0, self.timeout / 10) if interval is None else interval
        self.peers = [r for r in range(world_size) if r != rank]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sasg-heartbeat-{rank}", daemon=True)

    def start(self) -> Heartbeat:
        self._beat()  # a first beat before anyone can look
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread, then mark this rank finished: from then on no rank reports it."""
        self._stop.set()
        self._thread.join(timeout=5 * self.interval + 5)
        try:
            self.store.add(PREFIX + str(self.rank), FINISHED)
        except Exception:  # the store is gone: nobody is left to watch this rank
            pass

    def _beat(self) -> int:
        return self.store.add(PREFIX + str(self.rank), 1)

    def _run(self) -> None:
        now = time.monotonic()
        seen = {r: (-1, now) for r in self.peers}  # rank -> (last counter, when it last moved)
        try:
            while not self._stop.wait(self.interval):
                self._beat()
                now = time.monotonic()
                for r in self.peers:
                    count = self.store.add(PREFIX + str(r), 0)  # reads it (0 while not started yet)
                    if count >= FINISHED:
                        continue
                    if count != seen[r][0]:
                        seen[r] = (count, now)
                    elif now - seen[r][1] >= self.timeout and not self._stop.is_set():
                        self.on_hung(r, self.timeout)
                        return
        except Exception:  # the store failed: stop watching; --timeout still bounds every wait
            return


def start_heartbeat(timeout: float, rank: int, world_size: int) -> Heartbeat | None:
    """Start this rank's heartbeat on the process group's store; None when off (``timeout`` 0)
    or alone (one rank has nobody to watch)."""
    if not timeout or world_size < 2:
        return None
    store = process_group_store()
    try:
        store = store.clone()  # its own connection (see the module's docstring)
        store.set_timeout(timedelta(seconds=timeout))  # a stuck call gives up (ends the thread)
    except (AttributeError, RuntimeError):  # a store kind that cannot be cloned: share it as it is
        pass
    return Heartbeat(store, rank, world_size, timeout).start()
