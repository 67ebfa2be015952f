"""Joining a ``jax.distributed`` program from the command line (``convert --distributed``).

Example::

    index = join_distributed("10.0.0.2:1234", 16, 3, timeout=600)     # or all None: from the environment
"""

from __future__ import annotations

import atexit
import os

from ..errors import DistributedError


def join_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None,
                     timeout: float) -> int:
    """``jax.distributed.initialize`` from the flags, else from the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or a cluster JAX detects: Slurm, Open MPI, TPU pods,
    Kubernetes); returns this process's index. Failing to join is a DistributedError.

    Example::

        join_distributed(None, None, None, timeout=600)
    """
    import jax

    def env_int(name: str) -> int | None:
        value = os.environ.get(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise DistributedError(f"{name}={value!r} is not a number") from None

    num_processes = num_processes if num_processes is not None else env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else env_int("JAX_PROCESS_ID")
    where = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or "the cluster's coordinator"
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=max(1, int(timeout)),
                                   shutdown_timeout_seconds=max(10, int(min(timeout, 60))))
    except Exception as e:  # noqa: BLE001 - jax raises ValueError, RuntimeError or its own XlaRuntimeError
        reason = " ".join(str(e).split())[:300]
        raise DistributedError(f"cannot join the jax.distributed program at {where}: {reason}") from None
    atexit.register(jax.distributed.shutdown)
    return jax.process_index()
