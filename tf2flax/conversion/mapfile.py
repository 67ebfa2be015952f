"""Map files: a JSON or YAML file of :func:`tf2flax.convert`'s map options (``--map FILE``).

Example::

    tf2flax.convert(ckpt, out, **load_map_file("bert.yaml"))
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import MappingError, clip, short_repr
from ..mapping.names import check_part_axis

MAP_FILE_KEYS = ("map", "rules", "preset", "transforms", "part_axis", "stack_axis", "names")
_TRANSFORM_OPS = ("transpose", "reshape", "cast")
# A map file is a few kilobytes; these bounds keep a hostile one from costing more than a few MB.
MAX_BYTES, MAX_NESTING, MAX_STRING = 16 << 20, 32, 4096


def load_map_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or YAML map file into :func:`convert`'s keyword arguments.

    Keys: ``map`` (the assignment map), ``rules`` (``[[pattern, replacement], ...]`` or a mapping;
    ``null`` drops), ``preset``, ``transforms`` (``{path or regex: spec}``; a spec is ``transpose``,
    ``[transpose, [1, 0]]``, ``[reshape, [4, -1]]``, ``[cast, bfloat16]`` or a list of these) and
    ``part_axis``, ``stack_axis`` (an int or ``{regex: int}``: the layer axis of ``{i}`` stacks).

    Example::

        tf2flax.convert(ckpt, out, **load_map_file("bert.yaml"))
    """
    path = os.fspath(path)
    data = _parse(path, _read(path))
    if not isinstance(data, dict):
        raise MappingError(f"map file {path}: expected a mapping with keys {', '.join(MAP_FILE_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(MAP_FILE_KEYS))
    if unknown:
        raise MappingError(f"map file {path}: unknown key(s) {unknown}; expected {', '.join(MAP_FILE_KEYS)}")
    kwargs = {"mapping" if k == "map" else k: v for k, v in data.items()}
    for key, kinds, what in (("mapping", (dict, list), "a mapping of checkpoint name to output path, or a "
                              "list of [name, path] pairs"),
                             ("rules", (dict, list), "a list of [pattern, replacement] pairs, or a mapping"),
                             ("preset", (str,), "a name"), ("names", (str,), "object or full")):
        if kwargs.get(key) is not None and not isinstance(kwargs[key], kinds):
            raise MappingError(f"map file {path}: {'map' if key == 'mapping' else key} must be {what}, "
                               f"got {short_repr(kwargs[key])}")
    check_part_axis(kwargs.get("part_axis"), f"map file {path}")
    if kwargs.get("transforms") is not None:
        if not isinstance(kwargs["transforms"], dict):
            raise MappingError(f"map file {path}: transforms must be a mapping of output path (or regex) to spec")
        kwargs["transforms"] = {k: _file_spec(v, f"map file {path}: transforms[{clip(str(k))}]")
                                for k, v in kwargs["transforms"].items()}
    return kwargs


def read_data_file(path: str | os.PathLike) -> Any:
    """The JSON (``*.json``) or YAML in file ``path``, with a map file's limits (size, nesting, no
    aliases); bad input is a :class:`MappingError`.

    Example::

        leaves = read_data_file("target.json")
    """
    path = os.fspath(path)
    return _parse(path, _read(path))


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_BYTES:
                raise MappingError(f"map file {path} is larger than {MAX_BYTES >> 20} MB; a map file is a few KB")
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise MappingError(f"map file {path} does not exist") from None
    except OSError as e:
        raise MappingError(f"map file {path}: cannot read it: {e}") from None
    if len(raw) > MAX_BYTES:  # (a file that grew, or a pipe)
        raise MappingError(f"map file {path} is larger than {MAX_BYTES >> 20} MB; a map file is a few KB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MappingError(f"map file {path}: cannot read it: {e}") from None


def _parse(path: str, text: str) -> Any:
    """The JSON (``*.json``) or YAML in ``text``: no YAML aliases, at most ``MAX_NESTING`` levels."""
    import yaml

    try:
        data = json.loads(text) if path.endswith(".json") else yaml.load(text, Loader=_loader())
    except json.JSONDecodeError as e:
        raise MappingError(f"map file {path}: not valid JSON: {e}") from None
    except RecursionError:
        raise MappingError(f"map file {path}: nested more than {MAX_NESTING} levels deep") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = str(getattr(e, "problem", None) or e)[:300]
        raise MappingError(f"map file {path}: not valid YAML{where}: {problem}") from None
    _check_sizes(data, path)
    return data


def _check_sizes(data: Any, path: str) -> None:
    """Refuse nesting deeper than ``MAX_NESTING`` and strings longer than ``MAX_STRING`` (names,
    paths and patterns; a megabyte regex took minutes to compile and match), without recursion."""
    todo = [(data, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, str) and len(node) > MAX_STRING:
            raise MappingError(f"map file {path}: {clip(node, 40)} is longer than {MAX_STRING} characters, the "
                               "most a name, path or pattern in a map file may have")
        if isinstance(node, (dict, list)):
            if depth > MAX_NESTING:
                raise MappingError(f"map file {path}: nested more than {MAX_NESTING} levels deep")
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            todo += [(child, depth + 1) for child in children]


def _loader() -> type:
    """PyYAML's safe loader without aliases (a few hundred bytes of them expand to gigabytes when
    walked) and with nesting capped where it is scanned (flow ``[``/``{`` and block indentation:
    PyYAML's scanner slows down with every open level) and composed (recursively)."""
    import yaml

    def too_deep(mark: Any) -> Exception:
        return yaml.scanner.ScannerError(None, None, f"nested more than {MAX_NESTING} levels deep", mark)

    class MapFileLoader(yaml.SafeLoader):
        depth = 0

        def fetch_flow_collection_start(self, token_class: Any) -> None:
            if self.flow_level >= MAX_NESTING:
                raise too_deep(self.get_mark())
            super().fetch_flow_collection_start(token_class)

        def add_indent(self, column: int) -> bool:
            if len(self.indents) >= MAX_NESTING:
                raise too_deep(self.get_mark())
            return super().add_indent(column)

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, f"aliases (*{str(event.anchor)[:40]}) "
                                                  "are not allowed in map files", event.start_mark)
            if self.depth >= MAX_NESTING:
                raise too_deep(event.start_mark)
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return MapFileLoader


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
    raise MappingError(f"{where}: {short_repr(spec)} is not a transform: use transpose, [transpose, perm], "
                       "[reshape, shape], [cast, dtype] or a list of these")
