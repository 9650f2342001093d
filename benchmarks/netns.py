"""Private network namespaces for benchmarks and tests: one alone on its loopback, or two "nodes"
joined by a shaped veth pair. Linux, root and iproute2 (``ip``, ``tc``) needed.

    from netns import two_nodes            # benchmarks/ on sys.path

    with two_nodes(rate="100mbit", delay="2ms") as net:
        p0 = net.popen(0, ["python", "-m", "sasg", "launch", "--nnodes", "2", "--node-rank", "0",
                           "--master-addr", net.address(0), ...])
        p1 = net.popen(1, [..., "--node-rank", "1", "--master-addr", net.address(0), ...])
        net.shape(rate="1gbit")             # re-shape between runs
        net.kill(1)                         # node 1 "dies": SIGKILL to every process in it

The nodes are namespaces ``<prefix>-<pid>-<token>-node0`` and ``-node1``, each with ``lo`` up and one
end of a veth pair (``sasg0`` in node 0, ``sasg1`` in node 1) holding an IPv4 link-local address,
169.254.77.1 and 169.254.77.2 (/24). These exist only inside the two namespaces, so two runs at
once never clash and nothing reaches the host's network. Each node sees its own ``/etc/hosts``
(``/etc/netns/<name>/hosts``): ``sasg-node0`` and ``sasg-node1`` by name (so reverse look-ups, e.g.
by torch's TCPStore, answer at once instead of asking a DNS server the namespace cannot reach),
and the machine's host name as the node's own address, as on a real cluster; plain torchrun with
the c10d rendezvous then works unchanged (``--rdzv-endpoint sasg-node0:PORT``). Processes started
through :meth:`TwoNodes.popen` also get ``GLOO_SOCKET_IFNAME``/``TP_SOCKET_IFNAME`` set to the
node's veth, so gloo never picks an address from a name.

Shaping (:func:`shape_device`): ``tc tbf`` caps each direction at ``rate`` on its sender's veth
(egress), so a 100 Mbit/s link carries 100 Mbit/s each way, like a full-duplex NIC; ``delay`` adds
a one-way ``netem`` delay (a round trip gets twice that). Kernels built without ``sch_netem``
(``CONFIG_NET_SCH_NETEM``) cannot delay: asking for a delay there raises :class:`Unavailable`;
``TwoNodes.can_delay`` tells which kind this one is. :func:`measure_link` measures what the link
really does (TCP round-trip time, throughput).

Clean-up: :meth:`TwoNodes.close` (the context manager's exit, and an ``atexit`` hook) SIGKILLs
every process still inside the namespaces and deletes them, which removes the veth pair, and their
``/etc/netns`` folders. A run killed before it could clean up leaves namespaces whose name holds
a pid no longer alive: :func:`cleanup_leftovers` removes those (and only those: a run still going
is left alone); :func:`two_nodes` calls it first.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

PREFIX = "sasg2n"
ADDRESSES = ("169.254.77.1", "169.254.77.2")  # IPv4 link-local: no DAD wait, plain host:port syntax
PREFIX_LEN = 24
IFNAMES = ("sasg0", "sasg1")


class Unavailable(RuntimeError):
    """This machine cannot do it (not root, no iproute2, no CAP_NET_ADMIN, no netem): the reason."""


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (None: try it; creation itself may still fail)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add) and shape links (tc)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"needs iproute2: {' and '.join(missing)} not found (apt-get install iproute2)"
    return None


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run an iproute2 command; with ``check``, a failure raises :class:`Unavailable` with its stderr."""
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise Unavailable(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip() or f'exit {r.returncode}'}")
    return r


# ----- rates and delays --------------------------------------------------------------------------
def parse_rate(text: str) -> tuple[str, float]:
    """``'100mbit'`` -> ``('100mbit', 1e8)`` (tc's spelling, bits per second)."""
    t = str(text).strip().lower()
    for unit, mult in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if t.endswith(unit):
            try:
                value = float(t[: -len(unit)])
            except ValueError:
                break
            if value > 0:
                return t, value * mult
    raise ValueError(f"a rate like 100mbit or 1gbit, got {text!r}")


def check_link_flags(parser, rates, delay) -> None:
    """A benchmark's --rates/--delay parse, else ``parser.error`` with the reason (one line)."""
    try:
        for r in rates:
            parse_rate(r)
        parse_delay(delay)
    except ValueError as e:
        parser.error(str(e))


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP end this process as Ctrl-C does, through ``finally`` and ``with`` exits
    (:func:`two_nodes` and :func:`private_namespace` then remove their namespaces)."""

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)


def parse_delay(text: str | None) -> tuple[str, float] | None:
    """``'2ms'`` -> ``('2ms', 0.002)``; None, ``'0'``, ``'0ms'`` -> None (no delay)."""
    if text is None:
        return None
    t = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(us|ms|s)?", t)
    if not m:
        raise ValueError(f"a delay like 2ms or 500us, got {text!r}")
    seconds = float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1e-3}[m.group(2)]
    return None if seconds == 0 else (f"{m.group(1)}{m.group(2) or 'ms'}", seconds)


def tbf_burst(bits_per_s: float) -> int:
    """Bytes of burst: at least two 64 KiB GSO packets, else ~10 ms at the rate."""
    return max(131072, int(bits_per_s / 8 / 100))


def shape_device(ns: str, dev: str, rate: str | None, delay: str | None = None) -> None:
    """Egress of ``dev`` in namespace ``ns``: ``rate`` (tbf) and a one-way ``delay`` (netem), or
    neither (both None: the qdisc is removed)."""
    tc = ("ip", "netns", "exec", ns, "tc", "qdisc")
    sh(*tc, "del", "dev", dev, "root", check=False)  # nothing there yet is fine
    d = parse_delay(delay)
    tbf = []
    if rate is not None:
        r, bps = parse_rate(rate)
        tbf = ["tbf", "rate", r, "burst", str(tbf_burst(bps)), "latency", "200ms"]
    if d is None:
        if tbf:
            sh(*tc, "add", "dev", dev, "root", "handle", "1:", *tbf)
        return
    try:  # netem delays, its child tbf shapes (the recipe of the netem documentation)
        sh(*tc, "add", "dev", dev, "root", "handle", "1:", "netem", "delay", d[0], "limit", "100000")
    except Unavailable as e:
        raise Unavailable(f"cannot add a delay: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM); "
                          f"use no delay ({e})") from None
    if tbf:
        sh(*tc, "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf)


def qdiscs(ns: str, dev: str) -> str:
    """``tc qdisc show dev`` in ``ns`` (what shapes the link now)."""
    return sh("ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev).stdout.strip()


# ----- one namespace ------------------------------------------------------------------------------
ETC_NETNS = Path("/etc/netns")  # `ip netns exec NAME` bind-mounts /etc/netns/NAME/* over /etc/*


class Namespace:
    """A network namespace by name: created with ``lo`` up, deleted with everything inside it."""

    def __init__(self, name: str):
        self.name = name

    def create(self, hosts: str | None = None) -> Namespace:
        """``hosts``: the ``/etc/hosts`` processes started by :meth:`cmd` see (none: the host's)."""
        r = sh("ip", "netns", "add", self.name, check=False)
        if r.returncode != 0:
            raise Unavailable(f"cannot create a network namespace ({r.stderr.strip()}); "
                              "containers need CAP_NET_ADMIN")
        sh(*self.cmd(["ip", "link", "set", "lo", "up"]))
        if hosts is not None:
            (ETC_NETNS / self.name).mkdir(parents=True, exist_ok=True)
            (ETC_NETNS / self.name / "hosts").write_text(hosts)
        return self

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def pids(self) -> list[int]:
        r = sh("ip", "netns", "pids", self.name, check=False)
        return [int(p) for p in r.stdout.split() if p.isdigit()]

    def kill(self, sig: int = signal.SIGKILL) -> list[int]:
        """Send ``sig`` to every process in the namespace (as a node that crashes); their pids."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def counter(self, dev: str, name: str) -> int:
        """``/sys/class/net/<dev>/statistics/<name>`` as seen inside the namespace."""
        return int(sh(*self.cmd(["cat", f"/sys/class/net/{dev}/statistics/{name}"])).stdout)

    def delete(self) -> None:
        """SIGKILL what still runs inside (deleting the name alone would leave it running), then delete."""
        for _ in range(50):
            if not self.kill():
                break
            time.sleep(0.1)
        sh("ip", "netns", "del", self.name, check=False)
        shutil.rmtree(ETC_NETNS / self.name, ignore_errors=True)


def cleanup_leftovers(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces ``<prefix>-<pid>-...`` whose pid is gone (a crashed run's); their names."""
    removed = []
    names = {line.split()[0] for line in sh("ip", "netns", "list", check=False).stdout.splitlines() if line.strip()}
    names |= {p.name for p in ETC_NETNS.glob(f"{prefix}-*")}  # a crash between the two steps
    for name in sorted(names):
        m = re.fullmatch(re.escape(prefix) + r"-(\d+)-.+", name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue  # its owner is alive: not a leftover
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        Namespace(name).delete()
        removed.append(name)
    return removed


# ----- two nodes ----------------------------------------------------------------------------------
class TwoNodes:
    """Two namespaces ("node 0", "node 1") joined by a veth pair; see the module's docstring."""

    def __init__(self, prefix: str = PREFIX):
        base = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.nodes = (Namespace(f"{base}-node0"), Namespace(f"{base}-node1"))
        self.rate: str | None = None
        self.delay: str | None = None
        self.can_delay = False
        self._open = False

    # setup and teardown
    def open(self) -> TwoNodes:
        if reason := unavailable_reason():
            raise Unavailable(reason)
        atexit.register(self.close)
        self._open = True
        try:
            for i, ns in enumerate(self.nodes):
                ns.create(self.hosts(i))
            a, b = self.nodes
            # Each end is created inside its namespace: no name is ever taken in the host's.
            sh("ip", "link", "add", IFNAMES[0], "netns", a.name, "type", "veth",
               "peer", "name", IFNAMES[1], "netns", b.name)
            for i, ns in enumerate(self.nodes):
                sh("ip", "-n", ns.name, "addr", "add", f"{ADDRESSES[i]}/{PREFIX_LEN}", "dev", IFNAMES[i])
                sh("ip", "-n", ns.name, "link", "set", IFNAMES[i], "up")
            probe = sh(*a.cmd(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]), check=False)
            self.can_delay = probe.returncode == 0
            if self.can_delay:
                sh(*a.cmd(["tc", "qdisc", "del", "dev", "lo", "root"]), check=False)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        for ns in self.nodes:
            ns.delete()
        atexit.unregister(self.close)

    def __enter__(self) -> TwoNodes:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def hosts(self, node: int) -> str:
        """``/etc/hosts`` on ``node``: both nodes by name (``sasg-node0``, ``sasg-node1``; reverse
        look-ups of the peer's address answer at once, as in a cluster, instead of asking a DNS server
        the namespace cannot reach), and the machine's host name as this node's own address."""
        me = socket.gethostname()
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        lines += [f"{ADDRESSES[n]} sasg-node{n}" + (f" {me}" if n == node and me else "") for n in (0, 1)]
        # The same as IPv4-mapped IPv6 addresses: how a dual-stack server socket (torch's TCPStore) sees them.
        lines += [f"::ffff:{ADDRESSES[n]} sasg-node{n}" for n in (0, 1)]
        return "\n".join(lines) + "\n"

    # the link
    def shape(self, rate: str | None = None, delay: str | None = None) -> None:
        """Shape both directions: ``rate`` each way (tbf), ``delay`` one way (netem; RTT = 2x)."""
        for ns, dev in zip(self.nodes, IFNAMES):
            shape_device(ns.name, dev, rate, delay)
        d = parse_delay(delay)
        self.rate, self.delay = rate, (d[0] if d else None)

    def link(self, up: bool) -> None:
        """Cut (``False``) or restore the link: a cut drops every packet, FIN and RST included."""
        for ns, dev in zip(self.nodes, IFNAMES):
            sh("ip", "-n", ns.name, "link", "set", dev, "up" if up else "down")

    def qdiscs(self, node: int) -> str:
        return qdiscs(self.nodes[node].name, IFNAMES[node])

    # addresses, environment, processes
    def address(self, node: int) -> str:
        return ADDRESSES[node]

    def hostname(self, node: int) -> str:
        """``node``'s name, known on both nodes (``sasg-node0``, ``sasg-node1``)."""
        return f"sasg-node{node}"

    def ifname(self, node: int) -> str:
        return IFNAMES[node]

    def env(self, node: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """``env`` (default: this process's) plus what a torch.distributed process needs on ``node``."""
        e = dict(os.environ if env is None else env)
        e.update(GLOO_SOCKET_IFNAME=IFNAMES[node], TP_SOCKET_IFNAME=IFNAMES[node], PYTHONUNBUFFERED="1")
        return e

    def popen(self, node: int, argv: Sequence[str], env: Mapping[str, str] | None = None, **kw) -> subprocess.Popen:
        """Start ``argv`` on ``node`` in its own session (so ``os.killpg(p.pid, ...)`` reaches it all)."""
        kw.setdefault("start_new_session", True)
        return subprocess.Popen(self.nodes[node].cmd(argv), env=self.env(node, env), **kw)

    def run(self, node: int, argv: Sequence[str], env: Mapping[str, str] | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``node`` to its end, output captured as text (on timeout: killed, raised)."""
        p = self.popen(node, argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return communicate_all([p], timeout)[0]

    def run_both(self, argv_of, env: Mapping[str, str] | None = None, timeout: float | None = None,
                 ) -> list[subprocess.CompletedProcess]:
        """``argv_of(node)`` on both nodes at once; waits for both (on timeout, kills both and raises)."""
        procs = [self.popen(n, argv_of(n), env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for n in (0, 1)]
        return communicate_all(procs, timeout)

    def kill(self, node: int, sig: int = signal.SIGKILL) -> list[int]:
        """Every process on ``node`` gets ``sig`` (the node crashes); their pids."""
        return self.nodes[node].kill(sig)

    def tx_bytes(self, node: int) -> int:
        """Bytes ``node`` has sent on the link so far (its veth's tx counter)."""
        return self.nodes[node].counter(IFNAMES[node], "tx_bytes")


def _killpg(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def communicate_all(procs: Sequence[subprocess.Popen], timeout: float | None = None,
                    ) -> list[subprocess.CompletedProcess]:
    """Wait for every process (stdout/stderr read concurrently); on timeout kill them all and raise."""
    import threading

    results: list = [None] * len(procs)

    def wait(i: int) -> None:
        out, err = procs[i].communicate()
        results[i] = subprocess.CompletedProcess(procs[i].args, procs[i].returncode, out, err)

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(len(procs))]
    for t in threads:
        t.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    for t in threads:
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        for p in procs:
            _killpg(p)
        for t in threads:
            t.join(10)
        raise subprocess.TimeoutExpired([p.args for p in procs], timeout)
    return results


# One side of measure_link: node 1 serves (echo for the RTT, then a sink), node 0 measures.
_PROBE = r"""
import socket, sys, time
role, addr, port, nbytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if role == "serve":
    s = socket.create_server((addr, port)); c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(20):
        c.sendall(c.recv(1))
    got = 0
    while got < nbytes:
        got += len(c.recv(1 << 20))
    c.sendall(b"k")
else:
    for _ in range(100):
        try:
            c = socket.create_connection((addr, port)); break
        except OSError:
            time.sleep(0.05)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(20):
        t = time.perf_counter(); c.sendall(b"x"); c.recv(1); rtts.append(time.perf_counter() - t)
    buf, t = bytes(1 << 20), time.perf_counter()
    for _ in range(nbytes >> 20):
        c.sendall(buf)
    c.recv(1)
    print(sorted(rtts)[len(rtts) // 2], nbytes * 8 / (time.perf_counter() - t))
"""


def measure_link(net: TwoNodes, megabytes: int = 16, port: int = 29399) -> dict:
    """What the link does now, node 0 -> node 1: median TCP round-trip time of 1-byte messages,
    and throughput of ``megabytes`` MiB in one TCP stream."""
    nbytes = megabytes << 20
    server = net.popen(1, [sys.executable, "-c", _PROBE, "serve", net.address(1), str(port), str(nbytes)])
    try:
        r = net.run(0, [sys.executable, "-c", _PROBE, "send", net.address(1), str(port), str(nbytes)], timeout=120)
    finally:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            _killpg(server)
            server.wait()
    if r.returncode != 0:
        raise RuntimeError(f"link probe failed: {r.stderr.strip()}")
    rtt, bps = map(float, r.stdout.split())
    return {"rtt_ms": round(rtt * 1e3, 3), "mbit_per_s": round(bps / 1e6, 1)}


@contextmanager
def two_nodes(rate: str | None = None, delay: str | None = None, prefix: str = PREFIX) -> Iterator[TwoNodes]:
    """Two shaped nodes for the ``with`` block; removed at its end, whatever happens (see the
    module's docstring). Raises :class:`Unavailable` (with the reason) where this cannot run."""
    if reason := unavailable_reason():
        raise Unavailable(reason)
    cleanup_leftovers(prefix)
    net = TwoNodes(prefix).open()
    try:
        if rate is not None or delay is not None:
            net.shape(rate, delay)
        yield net
    finally:
        net.close()


@contextmanager
def private_namespace(name: str | None = None) -> Iterator[Namespace]:
    """One namespace with only ``lo`` (up): every byte a run inside sends crosses ``lo``."""
    if reason := unavailable_reason():
        raise Unavailable(reason)
    ns = Namespace(name or f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}-lo").create()
    atexit.register(ns.delete)
    try:
        yield ns
    finally:
        ns.delete()
        atexit.unregister(ns.delete)


if __name__ == "__main__":  # a quick look: make the pair, show it, remove it
    with two_nodes(rate="100mbit") as net:
        for n in (0, 1):
            print(f"node {n}: {net.nodes[n].name}  {net.ifname(n)} {net.address(n)}  {net.qdiscs(n)}")
        print(f"netem available: {net.can_delay}; measured: {measure_link(net)}")
        net.shape(rate="1gbit")
        print(f"1gbit: {measure_link(net)}")
    print(f"removed; leftovers now: {[l for l in sh('ip', 'netns', 'list').stdout.splitlines() if PREFIX in l]}")
