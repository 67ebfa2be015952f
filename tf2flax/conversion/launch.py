"""Joining a ``jax.distributed`` program from the command line (``convert --distributed``).

Before JAX's own initialization, the processes meet at the coordinator's address (:func:`rendezvous`):
process 0 listens there and the others report to it, so that a process missing after ``timeout``
seconds is named on every process that came (JAX's own initialization only ends the process with a
C++ check failure naming none). Then ``jax.distributed.initialize`` joins them, with a heartbeat timeout
within ``timeout``: a process killed later ends the others within it.

Example::

    cluster = resolve_cluster("10.0.0.2:1234", 16, 3)      # or all None: from the environment
    index = join_distributed(cluster, timeout=600)
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import selectors
import socket
import time
from typing import Callable

from ..errors import DistributedError

_HELLO = "tf2flax-join 1"
_LINE_MAX = 200


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Who this process is: the coordinator's ``HOST:PORT`` and the process count and index (None
    where JAX is to detect them: Slurm, Open MPI, TPU pods, Kubernetes)."""

    coordinator: str | None
    count: int | None
    index: int | None

    def describe(self) -> str:
        """``'2 processes at 127.0.0.1:1234'`` (what is known of it)."""
        count = f"{self.count} processes" if self.count is not None else "the other processes"
        return f"{count} at {self.coordinator or 'the address the cluster gives'}"


def resolve_cluster(coordinator: str | None, num_processes: int | None, process_id: int | None) -> Cluster:
    """The flags, else the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``); what neither gives stays None. Bad values are a DistributedError.

    Example::

        resolve_cluster(None, 2, 0)      # Cluster(coordinator=<JAX_COORDINATOR_ADDRESS>, count=2, index=0)
    """
    def env_int(name: str) -> int | None:
        value = os.environ.get(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise DistributedError(f"{name}={value[:40]!r} is not a number") from None

    count = num_processes if num_processes is not None else env_int("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else env_int("JAX_PROCESS_ID")
    if count is not None and count < 1:
        raise DistributedError(f"--num-processes {count}: expected 1 or more")
    if index is not None and count is not None and not 0 <= index < count:
        raise DistributedError(f"--process-id {index}: expected 0 to {count - 1} (--num-processes {count})")
    return Cluster(coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None, count, index)


def heartbeat_seconds(timeout: float) -> int:
    """JAX's heartbeat timeout for a conversion that waits ``timeout`` seconds: a killed process ends the
    others within ``timeout`` (JAX's default, 100 s, at most; 5 s at least, against false alarms)."""
    return int(max(5, min(100, timeout / 2)))


def join_distributed(cluster: Cluster, timeout: float, announce: Callable[[str], None] | None = None) -> int:
    """Meet the other processes (:func:`rendezvous`, when the coordinator, count and index are known),
    then ``jax.distributed.initialize``; returns this process's index. ``announce`` hears
    ``"waiting for N processes at ADDR"`` first. Failing to join is a DistributedError.

    Example::

        join_distributed(resolve_cluster(None, None, None), timeout=600)
    """
    import jax

    if announce is not None:
        announce(f"waiting for {cluster.describe()} (up to {timeout:.0f} s)")
    began = time.monotonic()
    if cluster.coordinator and cluster.count is not None and cluster.index is not None and cluster.count > 1:
        rendezvous(cluster.coordinator, cluster.count, cluster.index, timeout)
    left = max(1, int(timeout - (time.monotonic() - began)))
    try:
        jax.distributed.initialize(cluster.coordinator, cluster.count, cluster.index, initialization_timeout=left,
                                   heartbeat_timeout_seconds=heartbeat_seconds(timeout),
                                   shutdown_timeout_seconds=max(10, int(min(timeout, 60))))
    except Exception as e:  # noqa: BLE001 - jax raises ValueError, RuntimeError or its own XlaRuntimeError
        reason = " ".join(str(e).split())[:300]
        raise DistributedError(f"cannot join the jax.distributed program at {cluster.describe()}: {reason}") from None
    atexit.register(jax.distributed.shutdown)
    return jax.process_index()


def rendezvous(address: str, count: int, index: int, timeout: float) -> None:
    """Meet at ``address`` (``HOST:PORT``, the coordinator's) before JAX does: process 0 listens on its
    port and the others report there. Returns once all ``count`` processes came; otherwise raises, within
    ``timeout`` seconds, a DistributedError naming the processes that did not come (or, on a process
    other than 0, saying that process 0 did not answer). The listener is closed before JAX binds the
    same port.

    Example::

        rendezvous("127.0.0.1:12355", 2, 1, timeout=60)
    """
    host, port = _split(address)
    deadline = time.monotonic() + timeout
    if index == 0:
        _gather(port, count, deadline, address, timeout)
    else:
        _report(host, port, count, index, deadline, address, timeout)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise DistributedError(f"--coordinator {address[:100]!r}: expected HOST:PORT")
    return host.strip("[]"), number


def _missing_text(missing: list[int], count: int) -> str:
    named = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
    return f"process{'es' if len(missing) > 1 else ''} {named} of {count}"


def _gather(port: int, count: int, deadline: float, address: str, timeout: float) -> None:
    dual = socket.has_dualstack_ipv6()
    try:
        server = socket.create_server(("", port), family=socket.AF_INET6 if dual else socket.AF_INET,
                                      dualstack_ipv6=dual, backlog=max(16, min(count, 4096)))
    except OSError as e:
        raise DistributedError(f"process 0 cannot listen at {address} for the other processes: {e}") from None
    waiting = selectors.DefaultSelector()  # (epoll: any number of processes)
    waiting.register(server, selectors.EVENT_READ)
    peers: dict[socket.socket, bytes] = {}  # connected, hello not read yet
    joined: dict[int, socket.socket] = {}
    hellos: list[socket.socket] = []  # every process that reported (a duplicate index too: it hears why)
    problem = None
    try:
        while len(joined) < count - 1 and problem is None and time.monotonic() < deadline:
            for key, _ in waiting.select(min(deadline - time.monotonic(), 1.0)):
                sock = key.fileobj
                if sock is server:
                    try:
                        peer, _ = server.accept()
                    except OSError:
                        continue
                    peers[peer] = b""
                    waiting.register(peer, selectors.EVENT_READ)
                    continue
                hello = _read_hello(sock, peers)
                if hello is None:
                    continue
                waiting.unregister(sock)
                if hello == ():
                    sock.close()  # not one of ours (a port scanner, a client of something else)
                    continue
                their_index, their_count = hello
                hellos.append(sock)
                if their_count != count:
                    problem = (f"process {their_index} was started with {their_count} processes and process 0 "
                               f"with {count}: every process needs the same --num-processes")
                elif their_index in joined or not 0 < their_index < count:
                    problem = f"two processes were started as process {their_index} (--process-id)"
                joined.setdefault(their_index, sock)
        if problem is None and len(joined) < count - 1:
            missing = [i for i in range(1, count) if i not in joined]
            problem = (f"{_missing_text(missing, count)} did not join at {address} within {timeout:.0f} s (not "
                       "started, failed before joining, or given another --coordinator); nothing was written")
        answer = ("ok" if problem is None else f"error {problem}").encode() + b"\n"
        for sock in hellos:
            try:
                sock.sendall(answer)
            except OSError:
                pass
        _await_close(hellos, deadline=time.monotonic() + 5)  # they close first: no TIME_WAIT here
    finally:
        waiting.close()
        for sock in [*peers, *hellos]:
            sock.close()
        server.close()
    if problem is not None:
        raise DistributedError(problem)


def _read_hello(sock: socket.socket, peers: dict[socket.socket, bytes]) -> tuple[int, int] | tuple[()] | None:
    """A peer's ``(index, count)`` once its line is complete; ``()`` for anything else; None: not yet."""
    try:
        data = sock.recv(_LINE_MAX)
    except OSError:
        data = b""
    peers[sock] += data
    if data and b"\n" not in peers[sock] and len(peers[sock]) < _LINE_MAX:
        return None
    words = peers.pop(sock).split(b"\n", 1)[0].decode("ascii", "replace").split()
    if words[:2] != _HELLO.split() or len(words) != 4 or not all(w.isdigit() and len(w) < 10 for w in words[2:]):
        return ()
    return int(words[2]), int(words[3])


def _await_close(socks: list[socket.socket], deadline: float) -> None:
    with selectors.DefaultSelector() as waiting:
        for sock in socks:
            waiting.register(sock, selectors.EVENT_READ)
        left = len(socks)
        while left and time.monotonic() < deadline:
            for key, _ in waiting.select(max(0.0, deadline - time.monotonic())):
                try:
                    closed = not key.fileobj.recv(_LINE_MAX)
                except OSError:
                    closed = True
                if closed:
                    waiting.unregister(key.fileobj)
                    left -= 1


def _report(host: str, port: int, count: int, index: int, deadline: float, address: str, timeout: float) -> None:
    unanswered = (f"process 0 of {count} (the coordinator, at {address}) did not answer within {timeout:.0f} s "
                  "(not started, failed before joining, or at another address); nothing was written")
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DistributedError(unanswered)
        try:
            sock = socket.create_connection((host, port), timeout=min(left, 2.0))
            break
        except OSError:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    with sock:
        reply = b""
        try:
            sock.sendall(f"{_HELLO} {index} {count}\n".encode())
            while b"\n" not in reply and len(reply) < 4096:
                sock.settimeout(max(0.01, deadline + 5 - time.monotonic()))  # process 0 answers at its deadline
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        except OSError:
            pass
    text = reply.split(b"\n", 1)[0].decode("utf-8", "replace")
    if text == "ok":
        return
    if text.startswith("error "):
        raise DistributedError(text[len("error "):])
    raise DistributedError(unanswered)
