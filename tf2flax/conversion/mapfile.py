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
# A map file is a few kilobytes; these bounds keep a hostile one from costing more than a few seconds
# and tens of MB (PyYAML builds Python objects per node: about 3 s and 16 MB per MB of an ordinary map,
# and 0.5 s per 10,000 nodes of a flow list, measured on a busy 2-core machine; MAX_NODES keys and values
# are 10,000 entries). MAX_NUMBER: characters of an integer (int64 needs 20; Python's int() refuses
# over 4300 digits with a ValueError).
MAX_BYTES, MAX_NODES, MAX_NESTING, MAX_STRING, MAX_NUMBER = 1 << 20, 20_000, 32, 4096, 24


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
                raise MappingError(f"map file {path} is larger than {MAX_BYTES >> 20} MB; a map file is a few KB "
                                   "(use {i} and scopes instead of one entry per tensor)")
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise MappingError(f"map file {path} does not exist") from None
    except OSError as e:
        raise MappingError(f"map file {path}: cannot read it: {e}") from None
    if len(raw) > MAX_BYTES:  # (a file that grew, or a pipe)
        raise MappingError(f"map file {path} is larger than {MAX_BYTES >> 20} MB; a map file is a few KB "
                           "(use {i} and scopes instead of one entry per tensor)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MappingError(f"map file {path}: cannot read it: {e}") from None


def _parse(path: str, text: str) -> Any:
    """The JSON (``*.json``) or YAML in ``text``: no YAML aliases, at most ``MAX_NESTING`` levels, ``MAX_NODES``
    values, and integers of at most ``MAX_NUMBER`` characters, each refused while parsing."""
    import yaml

    try:
        data = (json.loads(text, parse_int=_json_int, object_pairs_hook=_json_counted())
                if path.endswith(".json") else yaml.load(text, Loader=_loader()))
    except json.JSONDecodeError as e:
        raise MappingError(f"map file {path}: not valid JSON: {e}") from None
    except ValueError as e:  # a number _json_int refused
        raise MappingError(f"map file {path}: {e}") from None
    except RecursionError:
        raise MappingError(f"map file {path}: nested more than {MAX_NESTING} levels deep") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = str(getattr(e, "problem", None) or e)[:300]
        raise MappingError(f"map file {path}: not valid YAML{where}: {problem}") from None
    _check_sizes(data, path)
    return data


def _json_int(text: str) -> int:
    if len(text) > MAX_NUMBER:
        raise ValueError(f"an integer of {len(text)} digits ({text[:20]}...); a number in a map file has at most "
                         f"{MAX_NUMBER}")
    return int(text)


def _json_counted() -> Any:
    """A ``json`` object hook that refuses more than ``MAX_NODES`` keys and values in all."""
    count = [0]

    def hook(pairs: list[tuple[str, Any]]) -> dict:
        count[0] += 2 * len(pairs)
        if count[0] > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES} keys and values; a map file is a few KB "
                             "(use {i} and scopes instead of one entry per tensor)")
        return dict(pairs)

    return hook


def _check_sizes(data: Any, path: str) -> None:
    """Refuse nesting deeper than ``MAX_NESTING`` and strings longer than ``MAX_STRING`` (names,
    paths and patterns; a megabyte regex took minutes to compile and match), without recursion."""
    todo = [(data, 1)]
    seen = 0
    while todo:
        node, depth = todo.pop()
        seen += 1
        if seen > MAX_NODES:
            raise MappingError(f"map file {path}: more than {MAX_NODES} keys and values; a map file is a few KB "
                               "(use {i} and scopes instead of one entry per tensor)")
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
        nodes = 0

        def construct_bounded_int(self, node: Any) -> int:
            if len(str(node.value)) > MAX_NUMBER:
                raise yaml.constructor.ConstructorError(
                    None, None, f"an integer of {len(str(node.value))} characters; a number in a map file has "
                    f"at most {MAX_NUMBER}", node.start_mark)
            return super().construct_yaml_int(node)

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
            self.nodes += 1
            if self.nodes > MAX_NODES:
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES} keys and values; a map file "
                                                  "is a few KB (use {i} and scopes instead of one entry per tensor)",
                                                  event.start_mark)
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    MapFileLoader.add_constructor("tag:yaml.org,2002:int", MapFileLoader.construct_bounded_int)
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
