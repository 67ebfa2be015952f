"""What ``mapping="auto"`` decided, and why: one line per leaf, a table, JSON, and a ``--map`` file.

Example::

    auto = tf2flax.suggest_mapping(ckpt, nnx.state(model))
    print(auto.summary())             # target <- source, transform, evidence, confidence
    auto.save("map.yaml")             # tf2flax.convert/init_params(..., **load_map_file("map.yaml"))
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
from typing import Any

from ...errors import MappingError
from .candidates import Fit


@dataclasses.dataclass
class Decision:
    """A target layer and the checkpoint layer (or ``{i}`` run, ``stacked``) that loads it."""

    target: str
    source: str
    fits: list[Fit]
    evidence: list[str]
    confidence: float
    margin: float
    stacked: bool = False


@dataclasses.dataclass
class Undecided:
    """A target layer auto will not load: its leaves, best candidates ``(source, score, evidence)`` and why."""

    target: str
    leaves: list[str]
    candidates: list[tuple[str, float, list[str]]]
    why: str

    def describe(self) -> str:
        cands = "; ".join(f"{c!r} (score {s:.2f}{': ' + ', '.join(e) if e else ''})" for c, s, e in self.candidates)
        return (f"target {self.target!r} ({', '.join(self.leaves)}): {self.why}"
                + (f". Candidates: {cands}" if cands else ""))


@dataclasses.dataclass
class AutoMapping:
    """The result of :func:`tf2flax.suggest_mapping`: decisions with evidence, and what is undecided."""

    pinned: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    pinned_rows: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    left: list[str] = dataclasses.field(default_factory=list)
    given_transforms: dict[str, Any] = dataclasses.field(default_factory=dict)
    rules: Any = None
    preset: str | None = None
    decisions: list[Decision] = dataclasses.field(default_factory=list)
    undecided: list[Undecided] = dataclasses.field(default_factory=list)
    unused_layers: list[str] = dataclasses.field(default_factory=list)
    used_sources: set[int] = dataclasses.field(default_factory=set)
    stacked_targets: set[int] = dataclasses.field(default_factory=set)

    @property
    def mapping(self) -> list[tuple[str, Any]]:
        """The assignment map: the pinned entries, then one ``(checkpoint name, target leaf)`` per leaf."""
        pairs = list(self.pinned)
        for d in sorted(self.decisions, key=lambda d: d.target):
            pairs += [(f.source, f.target) for f in sorted(d.fits, key=lambda f: f.target)]
        return pairs

    @property
    def transforms(self) -> dict[str, Any]:
        """The user's transforms plus the reshapes auto chose, by exact target path."""
        out = dict(self.given_transforms)
        for d in self.decisions:
            for f in d.fits:
                if f.spec is not None:
                    out[f.target] = (f.spec[0], tuple(f.spec[1]))
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One dict per target leaf: target, source, transform, evidence, confidence (decided ones)."""
        out = [{"target": t, "source": s, "transform": None, "evidence": ["given (hint or same name)"],
                "confidence": 1.0} for t, s in sorted(self.pinned_rows)]
        for d in sorted(self.decisions, key=lambda d: d.target):
            for f in sorted(d.fits, key=lambda f: f.target):
                out.append({"target": f.target, "source": f.source,
                            "transform": None if f.spec is None else [f.spec[0], list(f.spec[1])],
                            "evidence": [f.how, *d.evidence], "confidence": d.confidence})
        return out

    def to_json(self) -> dict[str, Any]:
        """Everything, for tools: ``decisions`` (rows), ``undecided``, ``unused`` checkpoint layers, ``left``."""
        return {"decisions": self.rows(),
                "undecided": [{"target": u.target, "leaves": u.leaves, "why": u.why,
                               "candidates": [{"source": c, "score": round(s, 3), "evidence": e}
                                              for c, s, e in u.candidates]} for u in self.undecided],
                "unused": self.unused_layers, "left_unset": self.left}

    def summary(self) -> str:
        """A table (one line per target leaf) plus the undecided targets and unused checkpoint layers."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"auto mapping: {len(self.rows())} leaves decided, {len(self.undecided)} layer(s) "
                            "undecided", show_lines=False)
        for col in ("target", "source", "transform", "evidence", "confidence"):
            table.add_column(col, overflow="fold")
        for row in self.rows():
            transform = "" if row["transform"] is None else f"{row['transform'][0]} {row['transform'][1]}"
            table.add_row(row["target"], row["source"], transform, ", ".join(_short(e) for e in row["evidence"]
                                                                            if _short(e)),
                          f"{row['confidence']:.2f}")
        buf = io.StringIO()
        Console(file=buf, width=max(shutil.get_terminal_size((160, 24)).columns, 100), force_terminal=False,
                color_system=None).print(table)
        lines = [buf.getvalue().rstrip()]
        lines += [f"undecided: {u.describe()}" for u in self.undecided]
        lines += [f"unused checkpoint layer: {p}" for p in self.unused_layers]
        lines += [f"left unset (hint): {p}" for p in self.left]
        return "\n".join(lines)

    def note(self) -> str:
        """One line for a plan's report: how many layers auto decided, and with what evidence."""
        by_order = sum(any(e.startswith("order:") for e in d.evidence) for d in self.decisions)
        scanned = sum(d.stacked for d in self.decisions)
        return (f"auto mapping: {len(self.decisions)} layer(s) decided ({by_order} with order evidence, {scanned} "
                f"scanned), {len(self.pinned)} leaf/leaves pinned by hints or equal names; "
                "tf2flax.suggest_mapping shows the evidence")

    def check(self, cli: bool = False) -> None:
        """Raise :class:`MappingError` naming every undecided target (nothing is loaded then); ``cli``
        words the way out in command-line flags."""
        if not self.undecided:
            return
        way_out = ("pin them in a --map file (map entries, rules, transforms) or leave them with --leave REGEX"
                   if cli else "pin them with map entries, rules or transforms, or leave them with "
                   "AutoMap(leave=[...])")
        head = (f"auto mapping refused: {len(self.undecided)} target layer(s) undecided (nothing was loaded; "
                f"{way_out}):")
        raise MappingError(head + "\n- " + "\n- ".join(u.describe() for u in self.undecided))

    def map_file(self) -> dict[str, Any]:
        """The ``--map`` file contents (see ``tf2flax.conversion.mapfile``) that reproduce this load."""
        data: dict[str, Any] = {"map": [[k, t] for k, t in self.mapping]}
        for k, t in self.mapping:
            if not isinstance(t, (str, list)):
                raise MappingError(f"map entry {k!r}: its target is not a path and cannot be saved")
        if self.rules is not None:
            rules = list(self.rules.items()) if isinstance(self.rules, dict) else list(self.rules)
            if not all(isinstance(p, str) and (r is None or isinstance(r, str)) for p, r in rules):
                raise MappingError("rules with functions or compiled patterns cannot be saved to a map file")
            data["rules"] = [[p, r] for p, r in rules]
        if self.preset:
            data["preset"] = self.preset
        transforms: dict[str, Any] = {}
        for key, spec in self.transforms.items():
            transforms[key] = _file_spec(spec, key)
        if transforms:
            data["transforms"] = transforms
        return data

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`map_file` as YAML (JSON for ``*.json``), atomically. Undecided targets are an error."""
        self.check()
        path = os.fspath(path)
        data = self.map_file()
        if path.endswith(".json"):
            text = json.dumps(data, indent=1)
        else:
            import yaml

            text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=1000)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-map-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def _short(evidence: str) -> str:
    """One piece of evidence as a table cell word: ``names 0.89``, ``order``, ``3 fit``, ``given``."""
    if evidence.startswith("names:"):
        return "names " + evidence.split()[1]
    if evidence.startswith("order:"):
        return "order"
    if evidence.startswith("shape:"):
        m = re.search(r"\((\d+) checkpoint layers? fit\)", evidence)
        return f"{m.group(1)} fit" if m else "shape"
    if evidence.startswith("scanned:"):
        return "scanned"
    if evidence.startswith("given"):
        return "given"
    return ""


def _file_spec(spec: Any, key: str) -> Any:
    """A transform spec as JSON/YAML lists; callables cannot be saved."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        arg = spec[1]
        return [spec[0], list(arg) if isinstance(arg, (tuple, list)) else str(arg)]
    if isinstance(spec, list):
        return [_file_spec(s, key) for s in spec]
    raise MappingError(f"transforms[{key!r}] is {type(spec).__name__}, which a map file cannot hold; "
                       "write it as transpose/reshape/cast steps")
