"""``convert --distributed`` runs under a small supervisor, so that JAX's own ends become our one line.

When a process of a ``jax.distributed`` program dies, JAX ends every other one from a C++ thread: a
check failure (``F... client.h:80] Terminating process because the JAX distributed service detected
fatal errors ...``), a C++ stack and SIGABRT, which no Python code can catch. So the command runs
again as a child process (the same command line, ``TF2FLAX_SUPERVISED=1``) whose stderr the
supervisor passes on, line by line (lines other than ours held until the next of ours), until such a
failure: then it prints one line ``tf2flax: error: ...`` naming the process that stopped (from JAX's
message), and exits with status 2. A child ended by another signal (the OOM killer, a library's abort)
is one line too. The child dies
with the supervisor (``PR_SET_PDEATHSIG``); SIGTERM is passed on to it, Ctrl-C reaches both.

Example::

    if not is_supervised():
        raise SystemExit(supervise(index=1, count=2, address="10.0.0.2:1234"))
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Any

SUPERVISED_ENV = "TF2FLAX_SUPERVISED"
_FATAL = re.compile(r"^F\d{4} [\d:.]+ +\d+ [^\]]*\] ?(.*)")
_UNHEALTHY = re.compile(r"stopped sending heartbeats\)?:?(.*?)(?:The tasks|$)", re.DOTALL)


def is_supervised() -> bool:
    """Whether this process is the child of :func:`supervise`."""
    return os.environ.get(SUPERVISED_ENV) == "1"


def supervise(index: int | None, count: int | None, address: str | None, debug: bool = False) -> int:
    """Run this command again as a supervised child; its exit status, or 2 after one line when JAX ended
    it (or a signal did). ``index``, ``count``, ``address``: this process's place, for the message.
    The child's stderr lines other than ``tf2flax: ...`` ones (C++ logs, a library's abort message) are
    held until the next of ours, and dropped if the child is ended (``debug``: all shown as they come).

    Example::

        status = supervise(0, 2, "127.0.0.1:1234")
    """
    die_with_parent = _pdeathsig()
    child = subprocess.Popen(list(sys.orig_argv), env={**os.environ, SUPERVISED_ENV: "1"}, stderr=subprocess.PIPE,
                             preexec_fn=die_with_parent)
    handlers = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),  # the terminal sends it to the child too
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))}
    fatal: list[str] = []
    held: list[str] = []  # lines not ours: shown before the next of ours, or at a normal end
    try:
        assert child.stderr is not None
        for raw in child.stderr:
            line = raw.decode("utf-8", "replace")
            m = _FATAL.match(line)
            if m and not fatal:
                fatal.append(m.group(1))
            elif fatal:
                if len(fatal) < 8:  # the rest of JAX's message; then its C++ stack, never shown
                    fatal.append(line.strip())
            elif debug:
                _show([line])
            elif not line.startswith("tf2flax:"):
                held.append(line)
                del held[:-200]
            else:
                _show(held)
                _show([line])
        status = child.wait()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if fatal:
        print(f"tf2flax: error: {why_ended(chr(10).join(fatal), index, count, address)}", file=sys.stderr)
        return 2
    if status < 0 and -status not in (signal.SIGINT, signal.SIGTERM):
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        hint = next((" ".join(h.split())[:200] for h in reversed(held) if "what()" in h or "rror" in h), None)
        print(f"tf2flax: error: {_this(index, count)} was ended by {name}{f' ({hint})' if hint else ''}; "
              "nothing was committed", file=sys.stderr)
        return 2
    _show(held)
    return 128 - status if status < 0 else status


def _show(lines: list[str]) -> None:
    sys.stderr.write("".join(lines))
    sys.stderr.flush()
    lines.clear()


def unhealthy(message: str) -> list[int]:
    """The processes JAX's ``message`` says stopped sending heartbeats (``1``, or ``/job:x/replica:0/task:1``).

    Example::

        unhealthy("... (stopped sending heartbeats):\\n1\\nThe tasks have crashed.")     # [1]
    """
    m = _UNHEALTHY.search(message)
    found = set()
    for token in (m.group(1).replace(",", " ").split() if m else []):
        task = re.search(r"task:(\d+)$", token)
        if task or token.isdigit():
            found.add(int(task.group(1) if task else token))
    return sorted(found)


def why_ended(message: str, index: int | None, count: int | None, address: str | None) -> str:
    """Our one line for JAX's fatal ``message`` (a C++ check failure ending this process).

    Example::

        why_ended("... (stopped sending heartbeats):\\n1\\nThe tasks have crashed.", 0, 2, None)
        # 'process 1 of 2 stopped (killed, or its host went down): JAX's heartbeat gave up on it; ...'
    """
    of = f" of {count}" if count is not None else ""
    tasks = [t for t in unhealthy(message) if t != index]
    if tasks:
        who = f"process{'es' if len(tasks) > 1 else ''} {', '.join(map(str, tasks[:20]))}{of}"
        return (f"{who} stopped (killed, or its host went down): JAX's heartbeat gave up on "
                f"{'them' if len(tasks) > 1 else 'it'}; nothing was committed")
    if "UNAVAILABLE" in message or "leader" in message:
        return (f"process 0{of} (the coordinator{', at ' + address if address else ''}) stopped or cannot be "
                "reached; nothing was committed")
    if "RegisterTask" in message:
        at = f" at {address}" if address else ""
        if count == 2 and index in (0, 1):  # then the one that did not join is the other
            return (f"process {1 - index} of 2 did not join JAX's coordination service{at} in time (killed, or "
                    "never started); nothing was written")
        return f"not every process joined{at} in time; nothing was written"
    reason = " ".join(message.split())[:300]
    return f"the jax.distributed program failed ({_this(index, count)}): {reason}; nothing was committed"


def _this(index: int | None, count: int | None) -> str:
    if index is None:
        return "this process"
    return f"process {index}" + (f" of {count}" if count is not None else "")


def _pdeathsig() -> Any:
    """A ``preexec_fn`` that has the kernel kill the child when this process dies (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGKILL)
