"""Per-target transforms: ``transforms={target_path_or_regex: spec}``.

A spec is one step or a list of steps, applied in order to the checkpoint tensor:

- ``'transpose'`` (reverse the axes) or ``('transpose', perm)``;
- ``('reshape', shape)`` (one ``-1`` allowed; a device region that splits or merges adjacent axes
  reads only its box of the source, see :class:`~tf2flax.plan.Reshape`);
- ``('cast', dtype)``;
- a callable ``f(np.ndarray) -> np.ndarray``; its output shape is worked out with ``jax.eval_shape``
  when the function traces (``jnp`` code, array methods), else it is taken to keep the shape; either
  way the shape is checked again when the data is read;
- a plan transform (``Transpose``, ``Reshape``, ``Cast``, ``Fn``, or anything with their methods).

A key is a target path (exact match first) or else a regex that must match a whole path
(``re.fullmatch``, on RE2); the first matching regex, in the dict's order, wins. A key may also be an
``nnx.Variable`` handle. For a partitioned target (``<var>/part_<n>`` leaves), the key is ``<var>``
and the transforms apply to the whole tensor before it is split.

Example::

    find_spec(specs, "params/Dense_0/kernel")     # 'transpose' for specs {r".*/kernel": 'transpose'}
    parse_spec('transpose', (3, 4), "params/Dense_0/kernel")     # (Transpose((1, 0)),)
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Mapping

import jax
import numpy as np

from ..errors import MappingError, short_repr
from ..patterns import compile_pattern
from ..plan import MAX_RANK, Cast, Fn, Reshape, Transform, Transpose

_OPS = ("transpose", "reshape", "cast")


class TransformSpecs:
    """Compiled ``transforms`` keys: exact paths first, then full-match regexes in order."""

    def __init__(self, transforms: Mapping[Any, Any] | None, resolve_key: Callable[[Any], str]) -> None:
        self.keys: list[tuple[str, Any, Any]] = []
        for key, spec in (transforms or {}).items():
            path = resolve_key(key)
            try:
                pattern = compile_pattern(path, "transforms key")
            except MappingError:  # not a regex: an exact path only
                pattern = None
            self.keys.append((path, pattern, spec))

    def find(self, path: str) -> Any:
        """The spec for ``path``, or None."""
        for key, _, spec in self.keys:
            if key == path:
                return spec
        for _, pattern, spec in self.keys:
            if pattern is not None and pattern.fullmatch(path):
                return spec
        return None

    def unmatched_keys(self, paths: list[str]) -> list[str]:
        """Keys that match none of ``paths`` (typos)."""
        known = set(paths)
        return [key for key, pattern, _ in self.keys
                if key not in known and not (pattern and any(pattern.fullmatch(p) for p in paths))]


def parse_spec(spec: Any, shape: tuple[int, ...], dtype: Any, where: str) -> tuple[Transform, ...]:
    """The transforms ``spec`` stands for, applied to a tensor of ``shape``/``dtype`` (``where`` names it)."""
    steps = spec if isinstance(spec, list) else [spec]
    out: list[Transform] = []
    for step in steps:
        t = _parse_step(step, shape, dtype, where)
        try:
            shape, dtype = t.out_shape(shape), t.out_dtype(dtype)
        except MappingError as e:
            raise MappingError(f"transform for {where}: {e}") from None
        out.append(t)
    return tuple(out)


def _parse_step(step: Any, shape: tuple[int, ...], dtype: Any, where: str) -> Transform:
    if hasattr(step, "out_shape") and hasattr(step, "apply"):
        return step
    if isinstance(step, str) and step == "transpose":
        return Transpose(tuple(range(len(shape)))[::-1])
    if isinstance(step, tuple) and len(step) == 2 and step[0] in _OPS:
        op, arg = step
        if op in ("transpose", "reshape"):
            values = _integers(arg, op, where)
            return Transpose(values) if op == "transpose" else Reshape(values, tuple(shape))
        try:
            return Cast(np.dtype(arg))
        except (TypeError, ValueError, SyntaxError) as e:  # numpy parses some dtype strings with ast
            raise MappingError(f"transform {short_repr(step)} for {where}: bad argument ({e})") from None
    if callable(step):
        return _fn(step, shape, dtype)
    raise MappingError(f"transform {short_repr(step)} for {where} is not one of 'transpose', ('transpose', perm), "
                       "('reshape', shape), ('cast', dtype), a callable or a list of these")


def _integers(arg: Any, op: str, where: str) -> tuple[int, ...]:
    """A ``transpose`` permutation or ``reshape`` shape: a list of at most ``MAX_RANK`` integers (not
    bools, not floats such as ``2.5``, which ``int()`` would silently truncate), each within int64."""
    if isinstance(arg, (str, bytes)) or not isinstance(arg, (list, tuple, np.ndarray)):
        raise MappingError(f"transform ({op!r}, {short_repr(arg)}) for {where}: expected a list of integers")
    if len(arg) > MAX_RANK:
        raise MappingError(f"transform {op!r} for {where}: {len(arg)} dimensions; numpy arrays have at most {MAX_RANK}")
    for a in arg:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, numbers.Integral):
            why = "is not an integer (expected a list of integers)"
        elif not -(1 << 63) < int(a) < 1 << 63:
            why = "is out of range (more than int64 holds)"
        else:
            continue
        raise MappingError(f"transform ({op!r}, {short_repr(arg)}) for {where}: {short_repr(a)} {why}")
    return tuple(int(a) for a in arg)


@dataclasses.dataclass(frozen=True)
class _Checked:
    """Calls ``fn`` and checks that the result has the shape the plan was validated with."""

    fn: Callable[[np.ndarray], Any]
    shape: tuple[int, ...]

    def __call__(self, array: np.ndarray) -> np.ndarray:
        out = np.asarray(self.fn(array))
        if out.shape != self.shape:
            raise MappingError(f"transform {getattr(self.fn, '__name__', self.fn)!r} returned shape "
                               f"{list(out.shape)}, the plan expected {list(self.shape)}")
        return out


def _fn(fn: Callable, shape: tuple[int, ...], dtype: Any) -> Fn:
    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(shape, dtype))
        out_shape = tuple(out.shape)
    except Exception:  # a numpy-only function: assume it keeps the shape, checked on read
        out_shape = shape
    return Fn(_Checked(fn, out_shape), shape_fn=lambda _: out_shape, name=getattr(fn, "__name__", "callable"))
