"""``convert`` inside a ``jax.distributed`` program: every process reads and writes only its share.

Every process calls :func:`tf2flax.convert` with the same arguments. The output leaves are sharded over
all processes' devices (``shardings``, or ``sharding_rules`` over ``mesh``, as in
:func:`tf2flax.init_params`; by default :func:`default_sharding`), each process reads the regions its
devices hold (:func:`tf2flax.materialize.materialize`) and Orbax's multi-process partial save writes
them; process 0 finalizes and installs the one checkpoint.

The processes agree after every step (:meth:`Team.step`): a process that fails tells the others
through JAX's coordination service, and every process raises the same :class:`DistributedError`
naming the failed process and its one-line reason; a process that does not arrive within
``timeout`` seconds is named in a timeout. (A killed process is detected by JAX's own heartbeat,
which ends the others; ``convert --distributed`` turns that into one line, see :mod:`.supervise`.)
Before anything is written, the processes compare digests of their plans, output paths and options
(:meth:`Team.agree`). Nothing is committed unless every process succeeded.

Example::

    jax.distributed.initialize()            # on every process
    tf2flax.convert("gs://runs/bert/ckpt-9", "/shared/bert-orbax", distributed=True)
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from ..errors import DistributedError, Tf2FlaxError
from ..materialize import materialize, planned_bytes
from ..plan import Plan, PlanEntry
from ..sharding import ShardingRules, check_sharding, resolve_shardings

T = TypeVar("T")

# Leaves smaller than this are not split but owned by one process (cheaper than many tiny shards).
MIN_SPLIT_BYTES = 1 << 20
DEFAULT_TIMEOUT_S = 600.0
_KEY_PREFIX = "tf2flax/convert"
_TEAMS = itertools.count()  # conversions of this program: every process counts the same


def output_mesh() -> Mesh:
    """All devices of all processes, as a ``(process, device)`` mesh (each row one process's devices)."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices).reshape(jax.process_count(), -1), ("process", "device"))


def split_spec(shape: Sequence[int], itemsize: int, mesh: Mesh) -> PartitionSpec | None:
    """How a large leaf is split over ``mesh``'s ``(process, device)`` axes, or None (small, or no axis
    divides). Preferred: the first axis over every device, then the first axis over the processes (a
    row-major checkpoint holds each such block's bytes together, so each process reads only its own),
    then the largest axis that divides over every device.

    Example::

        split_spec((30522, 768), 4, output_mesh())     # PartitionSpec(('process', 'device'), None)
    """
    if mesh.devices.size < 2 or not shape or math.prod(shape) * itemsize < MIN_SPLIT_BYTES:
        return None
    every, processes = tuple(mesh.axis_names), mesh.axis_names[0]
    choices = [(0, every, mesh.devices.size), (0, processes, mesh.devices.shape[0])]
    choices += [(i, every, mesh.devices.size) for i in sorted(range(1, len(shape)), key=lambda i: -shape[i])]
    for axis, axes, count in choices:
        if count > 1 and shape[axis] % count == 0:
            spec = [None] * len(shape)
            spec[axis] = axes
            return PartitionSpec(*spec)
    return None


def default_shardings(plan: Plan, mesh: Mesh) -> tuple[dict[str, Sharding], dict[str, int]]:
    """Large leaves split over ``mesh`` (:func:`split_spec`); every other leaf is
    owned by one process, the one that holds the fewest bytes so far, so each byte is read once.

    An owned leaf is replicated over one device per process with the owner's device first: Orbax
    writes only that first replica (replica 0), so the other processes hold placeholders and read
    nothing. Returns ``(shardings, {path: owner process})``.

    Example::

        shardings, owners = default_shardings(plan, output_mesh())
    """
    held = [0] * mesh.devices.shape[0]
    out: dict[str, Sharding] = {}
    whole = []
    for path, entry in plan.entries.items():
        nbytes = math.prod(entry.shape) * np.dtype(entry.dtype).itemsize
        spec = split_spec(entry.shape, np.dtype(entry.dtype).itemsize, mesh)
        if spec is None:
            whole.append((nbytes, path))
            continue
        out[path] = NamedSharding(mesh, spec)
        held = [h + nbytes // len(held) for h in held]
    owners = {}
    for nbytes, path in sorted(whole, key=lambda w: (-w[0], w[1])):
        owner = min(range(len(held)), key=lambda i: held[i])
        held[owner] += nbytes
        order = [owner] + [i for i in range(len(held)) if i != owner]
        out[path] = NamedSharding(Mesh(mesh.devices[order, 0], ("process",)), PartitionSpec())
        owners[path] = owner
    return out, owners


def output_shardings(plan: Plan, shardings: Any = None, mesh: Mesh | None = None,
                     sharding_rules: ShardingRules | None = None) -> tuple[dict[str, Sharding], dict[str, int]]:
    """``{output path: sharding}`` for every leaf: given ones first (as in ``init_params``), then
    :func:`default_shardings`; and the owners of the leaves one process reads. A sharding that does
    not fit its leaf is a MappingError."""
    targets = {p: jax.ShapeDtypeStruct(e.shape, e.dtype) for p, e in plan.entries.items()}
    given = resolve_shardings(targets, shardings, mesh=mesh, rules=sharding_rules)
    default, owners = default_shardings(
        Plan({p: e for p, e in plan.entries.items() if p not in given}, plan.report), output_mesh())
    out = {}
    for path, entry in plan.entries.items():
        sharding = given.get(path) or default[path]
        check_sharding(path, entry.shape, sharding)
        out[path] = sharding
    return out, owners


@contextlib.contextmanager
def wide_dtypes() -> Iterator[None]:
    """``jax_enable_x64`` on while a distributed conversion runs, in every thread (jax.Arrays of
    int64, float64... stay 64-bit, as numpy's do in a one-process convert); then as it was."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


class Team:
    """The processes of one distributed conversion: what each reads, and how they agree.

    ``timeout``: seconds a process waits for the others at each step before naming the missing ones.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        from jax._src import distributed as jax_distributed

        self._client = jax_distributed.global_state.client
        if self._client is None or jax.process_count() < 2:
            raise DistributedError("distributed convert needs jax.distributed.initialize() in every process "
                                   "(and more than one process)")
        self.index, self.count = jax.process_index(), jax.process_count()
        self.primary = self.index == 0
        self.timeout = timeout
        self.shardings: dict[str, Sharding] = {}
        self.owners: dict[str, int] = {}
        self._steps = itertools.count()
        self._run = f"{next(_TEAMS)}"
        token = f"{_KEY_PREFIX}/{self._run}/token"
        if self.primary:
            self._client.key_value_set(token, secrets.token_hex(4))
        try:
            self._token = self._client.blocking_key_value_get(token, int(timeout * 1000))
        except Exception:  # jax raises its own XlaRuntimeError on a deadline
            raise DistributedError(f"process 0 of {self.count} did not start the conversion within "
                                   f"{timeout:.0f} s") from None

    def token(self) -> str:
        """The same random token on every process (the temporary directory's suffix)."""
        return self._token

    def step(self, name: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` here, then agree with every process: if any failed, raise its reason everywhere."""
        error: BaseException | None = None
        result: Any = None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - whatever it is, every process must hear of it
            error = e
        key = f"{_KEY_PREFIX}/{self._run}/{next(self._steps)}"
        self._client.key_value_set(f"{key}/{self.index}", "" if error is None else _one_line(error))
        for other in range(self.count):
            try:
                reason = self._client.blocking_key_value_get(f"{key}/{other}", int(self.timeout * 1000))
            except Exception:  # jax raises its own XlaRuntimeError on a deadline
                raise DistributedError(f"process {other} of {self.count} did not finish '{name}' within "
                                       f"{self.timeout:.0f} s (stopped or killed?); nothing was committed") from error
            if reason:
                raise DistributedError(f"process {other} of {self.count} failed in '{name}': {reason}") from error
        return result

    def agree(self, facts: dict[str, str]) -> None:
        """Check that every process has the same ``facts`` (``{what: text}``, e.g. ``{"the output path": out}``),
        compared as digests through the coordination service: the first process that differs from process
        0 is a DistributedError on every process, naming what differs. Nothing is written before.

        Example::

            team.agree({"the plan (--map, --dtype, ...)": plan_text, "the output path (OUT)": str(out)})
        """
        mine = {what: hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
                for what, text in facts.items()}
        key = f"{_KEY_PREFIX}/{self._run}/{next(self._steps)}"
        self._client.key_value_set(f"{key}/{self.index}", json.dumps(mine))
        digests = []
        for other in range(self.count):
            try:
                digests.append(json.loads(self._client.blocking_key_value_get(f"{key}/{other}",
                                                                              int(self.timeout * 1000))))
            except Exception:  # jax raises its own XlaRuntimeError on a deadline
                raise DistributedError(f"process {other} of {self.count} did not compare its arguments within "
                                       f"{self.timeout:.0f} s (stopped or killed?); nothing was committed") from None
        for other, theirs in enumerate(digests[1:], 1):
            differ = [what for what in mine if theirs.get(what) != digests[0].get(what)]
            if differ:
                raise DistributedError(
                    f"process {other} of {self.count} was started with other arguments than process 0: "
                    f"{', '.join(differ)} differ{'s' if len(differ) == 1 else ''}; every process needs the same "
                    "command; nothing was written")

    def read(self, group: list[tuple[str, PlanEntry]]) -> list[tuple[str, Any]]:
        """This process's regions of ``group`` as global ``jax.Array``s (see :func:`wide_dtypes`); leaves
        another process owns are placeholders (zeros, never read nor written)."""
        mine = {p: e for p, e in group if self.owners.get(p, self.index) == self.index}
        arrays, _ = materialize(Plan(mine, None), self.shardings)
        for path, entry in group:
            if path not in mine:
                zeros = np.broadcast_to(np.zeros((), entry.dtype), entry.shape)
                arrays[path] = jax.make_array_from_callback(entry.shape, self.shardings[path],
                                                            lambda idx, z=zeros: z[idx])
        return [(path, arrays[path]) for path, _ in group]

    def share_bytes(self, plan: Plan) -> int:
        """Bytes of output this process reads (what its progress bar counts)."""
        mine = {p: e for p, e in plan.entries.items() if self.owners.get(p, self.index) == self.index}
        return planned_bytes(Plan(mine, None), self.shardings)

    def committed(self, tmp: Path) -> None:
        """After Orbax's finalize, before installing: record leaves as numpy arrays (as a one-process
        convert does), so that a plain ``ocp.v1.load(out)`` restores them without a sharding."""
        meta = tmp / "state" / "_METADATA"
        tree = json.loads(meta.read_text())
        for leaf in tree.get("tree_metadata", {}).values():
            value = leaf.get("value_metadata", {})
            if value.get("value_type") == "jax.Array":
                value["value_type"] = "np.ndarray"
        meta.write_text(json.dumps(tree))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, Tf2FlaxError) else f"{type(error).__name__}: {text}"
