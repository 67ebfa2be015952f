"""``tf2flax.convert``: a TensorFlow checkpoint -> an Orbax checkpoint, streamed, in constant memory.

Without a map, every tensor becomes a leaf at the path of its default name split on ``/`` (see
:mod:`tf2flax.naming`; optimizer state and bookkeeping are left out unless ``include_optimizer``).
With ``mapping``/``rules``/``preset``/``transforms`` the output tree is the one the map describes. There
is no model, so the target leaves are derived from the checkpoint: a scope entry
``'ckpt_scope/': 'out_scope/'`` makes a leaf ``out_scope/<rest>`` of every tensor with a (renamed) name
``ckpt_scope/<rest>`` (default name first, then a TF2 variable's ``full_name`` and object path; what
default naming leaves out is skipped); an exact entry ``'name': 'out/path'`` makes one leaf, of any
tensor. Without a map, the (renamed) default names are the leaves. Each leaf gets the shape and dtype
of its source after its transforms, and the mapping engine (:func:`tf2flax.mapping.build_plan`) then
builds and checks the plan with TensorFlow's rules, exactly as for :func:`tf2flax.init_params`.

The output is written with Orbax's own partial save (``ocp.v1.partial.save_async`` of groups of
leaves, then ``ocp.v1.partial.finalize``) into ``OUT.tmp-<random>`` and renamed to ``OUT`` at the
end, so that at most two groups of tensors are in memory and an interrupted run leaves no ``OUT``.
It restores with Orbax alone::

    import orbax.checkpoint as ocp
    params = ocp.v1.load(out)                                      # or, with the v0 API:
    params = ocp.StandardCheckpointer().restore(f"{out}/state")

Example::

    result = tf2flax.convert("/runs/bert/model.ckpt-1000", "/ckpts/bert-orbax", dtype="bfloat16")
    print(result.summary())
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import math
import os
import secrets
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .bundle import Checkpoint, open_checkpoint
from .errors import MappingError, OutputExistsError, UnsupportedFormatError
from .naming import DefaultName, default_names
from .plan import Cast, Plan, PlanEntry, TensorSource
from .progress import ByteProgress, human_bytes, human_rate
from .storage import is_url, redact_url

# Leaves that are both a leaf and the scope of other leaves (TF1 'w' and its slot 'w/Adam') keep
# their value one level down, under this key.
VALUE_KEY = "__value__"
# Bytes per Orbax partial save: enough groups for a smooth progress bar, few enough that Orbax's
# finalize (which merges metadata once per group) stays fast.
GROUP_MIN_BYTES, GROUP_MAX_BYTES, GROUPS = 64 << 20, 512 << 20, 32
# Orbax's OCDBT store refuses keys over 65535 bytes: an output path plus Orbax's suffixes must fit.
ORBAX_PATH_BYTES = 65_000
# JAX flattens trees recursively: one nested about 1000 deep fails (a SystemError) on restore.
TREE_DEPTH = 256
_MAP_FILE_KEYS = ("map", "rules", "preset", "transforms", "part_axis", "names")
_TRANSFORM_OPS = ("transpose", "reshape", "cast")


class ConvertWarning(UserWarning):
    """Tensors a conversion leaves out because Orbax cannot store them (strings, zero-size arrays)."""


@dataclasses.dataclass
class ConvertResult:
    """What :func:`convert` did: the plan (and its report), what was left out, and the totals.

    ``left_out``: ``(name, reason)`` for every checkpoint tensor not written: its default name when
    left out as optimizer state or bookkeeping, its output path when Orbax cannot store it (strings,
    zero-size tensors). ``out`` is None for a dry run.
    """

    plan: Plan
    left_out: list[tuple[str, str]]
    out: str | None
    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def report(self) -> Any:
        return self.plan.report

    def summary(self) -> str:
        """One line: tensors, bytes, seconds, throughput (and where)."""
        if self.out is None:
            return f"dry run: {len(self.plan.entries)} tensors, {human_bytes(_total_bytes(self.plan))} to write"
        return (f"converted {self.tensors} tensors, {human_bytes(self.bytes)} in {self.seconds:.1f} s "
                f"({human_rate(self.bytes, self.seconds)}) -> {self.out}")

    def describe(self) -> str:
        """The plan (one line per leaf, with shape and dtype), the report, and what was left out."""
        lines = [f"{e.describe()}  {list(e.shape)} {np.dtype(e.dtype).name}" for e in self.plan.entries.values()]
        lines.append(self.plan.report.summary())
        lines += [f"  left out: {name} ({why})" for name, why in self.left_out]
        return "\n".join(lines)


def convert(ckpt: str | os.PathLike | Checkpoint, out: str | os.PathLike, *, mapping: Any = None,
            rules: Any = None, preset: str | None = None, transforms: Mapping[Any, Any] | None = None,
            dtype: Any = None, include_optimizer: bool = False, part_axis: Any = None, names: str = "object",
            dry_run: bool = False, force: bool = False, progress: bool = False) -> ConvertResult:
    """Convert TensorFlow checkpoint ``ckpt`` into the Orbax checkpoint ``out`` (a new local directory).

    ``mapping``, ``rules``, ``preset``, ``transforms``, ``part_axis``: as for :func:`tf2flax.init_params`
    (see the module docstring for how the output tree follows from them). ``dtype``: cast floating
    tensors (not integers, bools, complex) to it, e.g. ``"bfloat16"``. ``include_optimizer``: keep optimizer
    state and bookkeeping. ``names``: how TF2 variables are named by default, ``"object"`` (object
    paths) or ``"full"`` (``full_name``, e.g. a Keras 3 layer path; see :mod:`tf2flax.naming`).
    ``dry_run``: plan and report only, write nothing. ``force``: replace an existing ``out`` (only once
    the new one is complete). ``progress``: a progress bar on a terminal.
    String and zero-size tensors, which Orbax cannot store, are left out with a warning.

    Example::

        r = tf2flax.convert("/runs/tf1/model.ckpt-7", "/ckpts/out", mapping={"bert/": "params/"})
        r.report.unused          # checkpoint tensors the map did not cover
    """
    began = time.perf_counter()
    out_path = _check_out(out, force)
    ckpt = ckpt if isinstance(ckpt, Checkpoint) else open_checkpoint(ckpt)
    cast_to = _float_dtype(dtype)
    named = default_names(ckpt, include_optimizer, names)
    left_out = [(n.name, n.left_out) for n in named if n.left_out]
    if mapping is None and rules is None and preset is None and not transforms:
        plan = _default_plan(ckpt, named, cast_to)
    else:
        plan = _mapped_plan(ckpt, named, mapping, rules, preset, transforms, cast_to, part_axis)
    plan, unwritable = _drop_unwritable(plan)
    left_out += unwritable
    _check_tree(list(plan.entries))
    _check_path_sizes(list(plan.entries))
    result = ConvertResult(plan, left_out, None)
    if dry_run:
        return result
    if not plan.entries:
        raise MappingError(f"{ckpt.path}: nothing to convert ({len(left_out)} tensor(s) left out, none mapped)")
    meta = {"tf2flax": {"source": ckpt.path, "include_optimizer": include_optimizer}}
    result.tensors, result.bytes = write_orbax(plan, out_path, force=force, progress=progress, custom_metadata=meta)
    result.out, result.seconds = str(out_path), time.perf_counter() - began
    return result


# ---- plans -------------------------------------------------------------------------------------------

def _default_plan(ckpt: Checkpoint, names: list[DefaultName], cast_to: np.dtype | None) -> Plan:
    from .mapping import MappingReport

    kept = [n for n in names if n.left_out is None]
    paths = settle_paths([n.name for n in kept])
    entries = {}
    for n in kept:
        source = TensorSource(ckpt, n.key)
        steps = (Cast(cast_to),) if cast_to is not None and _is_float(source.dtype) else ()
        entries[paths[n.name]] = PlanEntry(paths[n.name], source, steps)
    report = MappingReport(matched={t: e.describe()[len(t) + 4:] for t, e in entries.items()},
                           skipped=sorted(n.name for n in names if n.left_out))
    return Plan(entries, report)


def _mapped_plan(ckpt: Checkpoint, names: list[DefaultName], mapping: Any, rules: Any, preset: Any,
                 transforms: Mapping[Any, Any] | None, cast_to: np.dtype | None, part_axis: Any) -> Plan:
    from .mapping import build_plan, compile_rules, get_preset
    from .mapping.assignment import normalize
    from .mapping.names import CheckpointNames
    from .mapping.rules import rename
    from .mapping.transforms import TransformSpecs, parse_spec
    from .targets import TargetLeaf

    found = get_preset(preset)
    stages = ([found.rules] if found else []) + [compile_rules(rules)]

    def renamed(name: str) -> str | None:
        for stage in stages:
            name = rename(name, stage)
            if name is None:
                return None
        return name

    kept = [n for n in names if n.left_out is None]
    sources: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    if mapping is None:
        pairs = [(r, r, n.key) for n in kept if (r := renamed(n.name)) is not None]
        settled = settle_paths([p for _, p, _ in pairs])
        pairs = [(r, settled[p], key) for r, p, key in pairs]
        for _, path, key in pairs:
            sources[path] = (ckpt.shape(key), ckpt.dtype(key))
        mapping = [(r, path) for r, path, _ in pairs]
    else:
        resolver = CheckpointNames(ckpt, stages, None, part_axis)
        for key, target in sorted(normalize(mapping), key=lambda p: str(p[0])):
            sources.update(_targets_of(key, target, kept, renamed, resolver, ckpt))
    specs = TransformSpecs(transforms, _path_key)
    targets = {}
    for path, (shape, dtype) in sources.items():
        spec = specs.find(path)
        for step in parse_spec(spec, shape, dtype, repr(path)) if spec is not None else ():
            shape, dtype = step.out_shape(shape), step.out_dtype(dtype)
        if cast_to is not None and _is_float(dtype):
            dtype = cast_to
        targets[path] = TargetLeaf(path, tuple(shape), np.dtype(dtype), None, None)
    return build_plan(ckpt, mapping, targets, rules=rules, preset=preset, transforms=transforms,
                      part_axis=part_axis)


def _targets_of(key: Any, target: Any, kept: list[DefaultName], renamed: Callable[[str], str | None],
                resolver: Any, ckpt: Checkpoint) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The output leaves one map entry defines: ``path -> (shape, dtype)`` of its source."""
    where = f"map entry {key!r}: {target!r}"
    if not isinstance(key, str) or not isinstance(target, str):
        raise MappingError(f"{where}: convert needs string checkpoint names and output paths (splitting a "
                           "tensor into a list of targets needs a model: use tf2flax.init_params)")
    if not key.endswith("/"):
        if target.endswith("/") or not target:
            raise MappingError(f"{where}: a tensor maps to a leaf path; to map a scope, end both sides with '/'")
        found = resolver.resolve(key)
        if found is None:
            raise MappingError(f"{where}: checkpoint {ckpt.path} has no tensor {key!r}.{resolver.suggest(key)}")
        return {target: (tuple(found.source.shape), found.source.dtype)}
    if "/" not in target:
        raise MappingError(f"{where}: a scope target ends with '/', e.g. '{target}/'")
    scope = target[: target.rindex("/")]
    out = {}
    for n in kept:
        for name in (n.name, *n.aliases):
            r = renamed(name)
            if r is not None and (key == "/" or (r.startswith(key) and len(r) > len(key))):
                rest = r if key == "/" else r[len(key):]
                out[f"{scope}/{rest}" if scope else rest] = (ckpt.shape(n.key), ckpt.dtype(n.key))
                break
    return out


def _path_key(key: Any) -> str:
    if not isinstance(key, str):
        raise MappingError(f"transforms keys are output paths or regexes (strings) in a conversion, got {key!r}")
    return key


def _drop_unwritable(plan: Plan) -> tuple[Plan, list[tuple[str, str]]]:
    """Leave out what Orbax cannot store (strings, zero-size arrays), with a warning."""
    kinds: dict[str, list[str]] = {"string tensor": [], "zero-size tensor": []}
    entries = {}
    for path, e in plan.entries.items():
        if np.dtype(e.dtype).kind in "OSU":
            kinds["string tensor"].append(path)
        elif math.prod(e.shape) == 0:
            kinds["zero-size tensor"].append(path)
        else:
            entries[path] = e
    dropped = []
    for why, paths in kinds.items():
        if paths:
            warnings.warn(f"left out {len(paths)} {why}(s), which Orbax cannot store: {', '.join(paths)}",
                          ConvertWarning, stacklevel=3)
            for p in paths:
                plan.report.matched.pop(p, None)
                plan.report.unused.append(plan.entries[p].source.describe())
                dropped.append((p, why))
    return Plan(entries, plan.report), dropped


# ---- the output tree ---------------------------------------------------------------------------------

def settle_paths(paths: list[str]) -> dict[str, str]:
    """``path -> output path``: a path that is also the scope of other paths moves to ``<path>/__value__``.

    Example::

        settle_paths(["w", "w/Adam"])      # {'w': 'w/__value__', 'w/Adam': 'w/Adam'}
    """
    scopes = {p[:i] for p in paths for i, c in enumerate(p) if c == "/"}
    return {p: f"{p}/{VALUE_KEY}" if p in scopes else p for p in paths}


def _check_tree(paths: list[str]) -> None:
    """Refuse output trees Orbax would store wrongly: a leaf that is also a scope, or two leaves whose
    key paths join to the same Orbax parameter name (Orbax joins keys with '.': 'a.b' and 'a/b')."""
    leaves = set(paths)
    for p in paths:
        for i, c in enumerate(p):
            if c == "/" and p[:i] in leaves:
                raise MappingError(f"output leaf {p[:i]!r} is also the scope of {p!r}; map one of them elsewhere")
    seen: dict[str, str] = {}
    for p in paths:
        stored = p.replace("/", ".")
        if stored in seen:
            raise MappingError(f"output leaves {seen[stored]!r} and {p!r} would both be stored by Orbax as "
                               f"{stored!r} (it joins keys with '.'); rename one with a map or rules")
        seen[stored] = p


def _check_path_sizes(paths: list[str]) -> None:
    """Refuse, before writing anything, an output path Orbax cannot store (tensorstore fails with a
    traceback and a message twice the path's size) or JAX cannot restore (a tree ~1000 deep)."""
    for p in paths:
        if len(p.encode()) > ORBAX_PATH_BYTES:
            raise MappingError(f"output path {redact_url(p, limit=200)!r} is {len(p.encode())} bytes; Orbax stores "
                               f"paths of at most {ORBAX_PATH_BYTES} bytes: map the tensor to a shorter path")
        if p.count("/") >= TREE_DEPTH:
            raise MappingError(f"output path {redact_url(p, limit=200)!r} is {p.count('/') + 1} levels deep; JAX "
                               f"restores trees of at most {TREE_DEPTH} levels: map the tensor to a shorter path")


def _nest(items: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in items:
        *scopes, leaf = path.split("/")
        node = tree
        for s in scopes:
            node = node.setdefault(s, {})
        node[leaf] = value
    return tree


# ---- writing -----------------------------------------------------------------------------------------

def _check_out(out: str | os.PathLike, force: bool) -> Path:
    if is_url(os.fspath(out)):
        raise UnsupportedFormatError(f"{os.fspath(out)}: convert writes to a local directory; copy it "
                                     "to cloud storage afterwards")
    path = Path(out).absolute()
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; use --force (force=True) to replace it")
    return path


def _location(entry: PlanEntry) -> tuple[int, int]:
    """Where an entry's bytes start (shard, offset), to read the checkpoint front to back."""
    source = entry.source
    name, reader = getattr(source, "name", None), getattr(source, "reader", None)
    if isinstance(reader, Checkpoint) and name in reader:
        info = reader.info(name)
        stored = info.stored if info.stored is not None else info.slices[0][1]
        return stored.shard_id, stored.offset
    return 1 << 62, 0


def _nbytes(entry: PlanEntry) -> int:
    return math.prod(entry.shape) * np.dtype(entry.dtype).itemsize


def _total_bytes(plan: Plan) -> int:
    return sum(_nbytes(e) for e in plan.entries.values())


def _groups(plan: Plan) -> Iterator[list[tuple[str, PlanEntry]]]:
    """Entries in checkpoint order, in groups of about ``total / GROUPS`` bytes (within the bounds)."""
    budget = min(GROUP_MAX_BYTES, max(GROUP_MIN_BYTES, _total_bytes(plan) // GROUPS))
    group: list[tuple[str, PlanEntry]] = []
    size = 0
    for path, entry in sorted(plan.entries.items(), key=lambda kv: _location(kv[1])):
        if group and size + _nbytes(entry) > budget:
            yield group
            group, size = [], 0
        group.append((path, entry))
        size += _nbytes(entry)
    if group:
        yield group


def write_orbax(plan: Plan, out: str | os.PathLike, *, force: bool = False, progress: bool = False,
                custom_metadata: dict | None = None) -> tuple[int, int]:
    """Write every entry of ``plan`` to the new Orbax checkpoint ``out``; returns ``(tensors, bytes)``.

    At most two groups of tensors are in memory: one being written (``ocp.v1.partial.save_async``)
    while the next is read. ``ocp.v1.partial.finalize`` completes ``OUT.tmp-<random>``, which then
    becomes ``out`` (replacing an existing ``out`` only with ``force``). On any error or interrupt the
    temporary files are removed.

    Example::

        write_orbax(plan, "/ckpts/out")
    """
    import orbax.checkpoint as ocp

    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{secrets.token_hex(4)}")
    ctx = ocp.v1.Context()
    ctx.array.saving.use_compression = False   # 2x faster; weights barely compress
    ctx.memory.deepcopy_host_arrays = False    # our arrays are ours: no second copy
    total, tensors, written = _total_bytes(plan), 0, 0
    pending: tuple[Any, int, str] | None = None  # the group being written while the next one is read
    try:
        with ctx, ByteProgress(total, progress, "converting") as bar, _sigint_between_groups() as check:
            for group in _groups(plan):
                items = [(path, _read(path, entry)) for path, entry in group]
                check()
                if pending is not None:
                    _finish(pending, bar)
                size = sum(a.nbytes for _, a in items)
                meta = custom_metadata if not tensors else None
                tensors, written = tensors + len(group), written + size
                label = f"converting ({tensors}/{len(plan.entries)} tensors)"
                pending = (ocp.v1.partial.save_async(tmp, _nest(items), custom_metadata=meta), size, label)
                del items
            if pending is not None:
                _finish(pending, bar)
                pending = None
            check()
            ocp.v1.partial.finalize(tmp)
        _install(tmp, out, force)
    except BaseException:
        if pending is not None:  # let Orbax's writer threads stop before removing their files
            with contextlib.suppress(BaseException):
                pending[0].result()
        for leftover in tmp.parent.glob(glob.escape(tmp.name) + "*"):  # Orbax adds suffixes of its own
            shutil.rmtree(leftover, ignore_errors=True)
        raise
    return tensors, written


@contextlib.contextmanager
def _sigint_between_groups() -> Iterator[Callable[[], None]]:
    """Ctrl-C while Orbax's threads write would leave their files behind: in the main thread, hold it
    until ``check()`` (called between groups), which raises KeyboardInterrupt at a safe point."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: None
        return
    caught: list[int] = []

    def check() -> None:
        if caught:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


def _finish(pending: tuple[Any, int, str], bar: ByteProgress) -> None:
    response, size, label = pending
    response.result()
    bar.advance(size, description=label)


def _read(path: str, entry: PlanEntry) -> np.ndarray:
    array = entry.read()
    if array.shape != entry.shape or array.dtype != entry.dtype:
        raise MappingError(f"{entry.describe()}: read {list(array.shape)} {array.dtype}, the plan says "
                           f"{list(entry.shape)} {np.dtype(entry.dtype).name}")
    return array


def _install(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` (``force``) goes only after that."""
    if not out.exists() and not out.is_symlink():
        os.rename(tmp, out)
        return
    if not force:
        raise OutputExistsError(f"{out} appeared while converting; the conversion is discarded")
    old = out.with_name(f"{out.name}.old-{secrets.token_hex(4)}")
    os.rename(out, old)
    os.rename(tmp, out)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


# ---- options ------------------------------------------------------------------------------------------

def _float_dtype(dtype: Any) -> np.dtype | None:
    if dtype is None:
        return None
    import ml_dtypes  # noqa: F401  (registers bfloat16 and float8 names with numpy)

    try:
        found = np.dtype(dtype)
    except TypeError:
        raise MappingError(f"unknown dtype {dtype!r}") from None
    if not _is_float(found):
        raise MappingError(f"dtype {found.name!r} is not a floating dtype (only floating tensors are cast)")
    return found


def _is_float(dtype: Any) -> bool:
    import ml_dtypes

    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return True
    try:
        ml_dtypes.finfo(dtype)
    except (ValueError, TypeError):
        return False
    return dtype.kind == "V"


def load_map_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or YAML map file into :func:`convert`'s keyword arguments.

    Keys: ``map`` (the assignment map), ``rules`` (``[[pattern, replacement], ...]`` or a mapping;
    ``null`` drops), ``preset``, ``transforms`` (``{path or regex: spec}``; a spec is ``transpose``,
    ``[transpose, [1, 0]]``, ``[reshape, [4, -1]]``, ``[cast, bfloat16]`` or a list of these) and
    ``part_axis``.

    Example::

        tf2flax.convert(ckpt, out, **load_map_file("bert.yaml"))
    """
    import yaml

    path = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(f"map file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MappingError(f"map file {path}: cannot read it: {e}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise MappingError(f"map file {path}: not valid JSON: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise MappingError(f"map file {path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise MappingError(f"map file {path}: expected a mapping with keys {', '.join(_MAP_FILE_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(_MAP_FILE_KEYS))
    if unknown:
        raise MappingError(f"map file {path}: unknown key(s) {unknown}; expected {', '.join(_MAP_FILE_KEYS)}")
    kwargs = {"mapping" if k == "map" else k: v for k, v in data.items()}
    if kwargs.get("preset") is not None and not isinstance(kwargs["preset"], str):
        raise MappingError(f"map file {path}: preset must be a name")
    if kwargs.get("transforms") is not None:
        if not isinstance(kwargs["transforms"], dict):
            raise MappingError(f"map file {path}: transforms must be a mapping of output path (or regex) to spec")
        kwargs["transforms"] = {k: _file_spec(v, f"map file {path}: transforms[{k!r}]")
                                for k, v in kwargs["transforms"].items()}
    return kwargs


def _is_step(x: Any) -> bool:
    return x in _TRANSFORM_OPS or (isinstance(x, list) and len(x) == 2 and x[0] in _TRANSFORM_OPS)


def _file_spec(spec: Any, where: str) -> Any:
    """A transform spec from JSON/YAML (lists only) as the Python spec (``(op, arg)`` tuples)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, list) and len(spec) == 2 and spec[0] in _TRANSFORM_OPS and not _is_step(spec[1]):
        return (spec[0], spec[1])
    if isinstance(spec, list) and spec and all(_is_step(s) for s in spec):
        return [s if isinstance(s, str) else (s[0], s[1]) for s in spec]
    raise MappingError(f"{where}: {spec!r} is not a transform: use transpose, [transpose, perm], "
                       "[reshape, shape], [cast, dtype] or a list of these")
