"""Processes and sockets of the integration tests that start Ray, read from /proc (Linux).

`local_ray` starts Ray the way edgecache does (`edgecache.raycluster.start_local_ray`) for a
test module and checks afterwards that nothing it started is left running; the socket helpers
let a test assert that the node and its traffic stay on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LISTEN, ESTABLISHED = "0A", "01"  # TCP states as /proc/net/tcp writes them
# 127.0.0.1, ::1 and ::ffff:127.0.0.1 as /proc/net/tcp{,6} write them
LOOPBACK = ("0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F")


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    """Running, or exited but not reaped (a zombie holds nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_sockets(pids: set[int] | None = None) -> list[tuple[str, str, str, int | None]]:
    """(local address, remote address, state, pid) of every TCP socket the processes hold, or of
    every socket on the machine (pid None) when `pids` is None; addresses as /proc writes them."""
    owner: dict[str, int] = {}
    for pid in pids or ():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if pids is None or cols[9] in owner:
                out.append((cols[1], cols[2], cols[3], owner.get(cols[9])))
    return out


def is_loopback(address: str) -> bool:
    return address.rsplit(":", 1)[0] in LOOPBACK


def listening_on(port: int, pids: set[int] | None = None) -> list[str]:
    """Local addresses of the sockets listening on `port` (of these processes, or any)."""
    suffix = f":{port:04X}"
    return [a for a, _, state, _ in tcp_sockets(pids) if state == LISTEN and a.endswith(suffix)]


def established(pids: set[int]) -> list[tuple[str, str]]:
    """(local, remote) addresses of the ESTABLISHED TCP connections these processes hold."""
    return [(a, b) for a, b, state, _ in tcp_sockets(pids) if state == ESTABLISHED]


class RayRun:
    """What `local_ray` yields: the ray module and the processes started since it began."""

    def __init__(self, ray, before: set[int]) -> None:
        self.ray, self._before = ray, before

    def pids(self) -> set[int]:
        return descendants(os.getpid()) - self._before


@contextlib.contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[RayRun]:
    """`start_local_ray(num_cpus)` for a test module, checked to be on 127.0.0.1. On exit Ray is
    shut down (stop Serve first), the environment variables and the Ray constant that
    start_local_ray set are restored, and every process started meanwhile must have exited.
    Processes that were already running (the session's moto server) are not Ray's."""
    import ray
    from ray._private import ray_constants

    from edgecache.raycluster import RAY_ENVIRONMENT, start_local_ray

    saved_env = {k: os.environ.get(k) for k in RAY_ENVIRONMENT}
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    run = RayRun(ray, descendants(os.getpid()))
    pids: set[int] = set()
    try:
        start_local_ray(num_cpus=num_cpus)
        # ray.util.get_node_ip_address() still names the routable interface; the node itself is
        # registered on loopback (Ray's own gRPC ports listen on all interfaces regardless).
        assert ray._private.worker.global_worker.node.node_ip_address == "127.0.0.1"
        assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
        yield run
    finally:
        pids = run.pids()
        try:
            ray.shutdown()
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = saved_constant
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    # Under load (CI runs this beside other suites) Ray's workers take a while to exit.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    assert pids, "no Ray processes were seen: the check below would prove nothing"
    left = [p for p in pids if alive(p)]
    assert not left, f"Ray processes left behind: {left}"
