"""Map files: a JSON or YAML file of :func:`tf2flax.convert`'s map options (``--map FILE``).

Example::

    tf2flax.convert(ckpt, out, **load_map_file("bert.yaml"))
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import MappingError

MAP_FILE_KEYS = ("map", "rules", "preset", "transforms", "part_axis", "stack_axis", "names")
_TRANSFORM_OPS = ("transpose", "reshape", "cast")


def load_map_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or YAML map file into :func:`convert`'s keyword arguments.

    Keys: ``map`` (the assignment map), ``rules`` (``[[pattern, replacement], ...]`` or a mapping;
    ``null`` drops), ``preset``, ``transforms`` (``{path or regex: spec}``; a spec is ``transpose``,
    ``[transpose, [1, 0]]``, ``[reshape, [4, -1]]``, ``[cast, bfloat16]`` or a list of these) and
    ``part_axis``, ``stack_axis`` (an int or ``{regex: int}``: the layer axis of ``{i}`` stacks).

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
        raise MappingError(f"map file {path}: expected a mapping with keys {', '.join(MAP_FILE_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(MAP_FILE_KEYS))
    if unknown:
        raise MappingError(f"map file {path}: unknown key(s) {unknown}; expected {', '.join(MAP_FILE_KEYS)}")
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
