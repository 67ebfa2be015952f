"""The command line: ``python -m tf2flax convert|ls|presets``.

Bad input (a missing path, something that is not a checkpoint, a bad map file, an existing output
without ``--force``) prints one line ``tf2flax: error: ...`` on stderr and exits with status 2 (with
``--debug``, after a traceback); an interrupt exits with 130, SIGTERM with 143. None of them leaves a
finished-looking output. Messages speak in flags (``--force``), as the Python API's speak in
arguments (``force=True``); ``--debug`` and ``--quiet`` go before or after the command.

Example::

    python -m tf2flax ls /runs/bert/model.ckpt-1000 --names full
    python -m tf2flax ls /runs/bert/model.ckpt-1000 --preset bert      # what each tensor becomes
    python -m tf2flax presets
    python -m tf2flax convert /runs/bert/model.ckpt-1000 /ckpts/bert --map bert.yaml --dtype bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import traceback
import warnings
from typing import Any, Sequence

from .errors import DistributedError, Tf2FlaxError, command_line_wording
from .progress import human_bytes
from .storage import redact_url


_KERAS_CONFIG_HELP = ("for a Keras .weights.h5: the model's config.json or .keras, to name variables by their "
                      "Keras paths (see docs/keras.md)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m tf2flax``."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="tf2flax", description="TensorFlow checkpoints for JAX/Flax, "
                                     "without TensorFlow.")
    parser.add_argument("--version", action="version", version=f"tf2flax {__version__}")
    _add_common(parser, default=False)
    # The same flags after the subcommand; SUPPRESS keeps a flag given before it (tf2flax --debug ls ...).
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", parents=[common], help="convert a TF checkpoint to an Orbax checkpoint",
                          description="Convert a TensorFlow checkpoint to an Orbax checkpoint, streamed.")
    conv.add_argument("ckpt", metavar="CKPT", help="checkpoint prefix, directory or URL")
    conv.add_argument("out", metavar="OUT", help="the Orbax checkpoint to create: a directory or a gs:// URL")
    conv.add_argument("--map", metavar="FILE", help="JSON or YAML: map, rules, preset, transforms, part_axis, stack_axis, names")
    conv.add_argument("--preset", metavar="NAME", help="renames for a framework's naming (e.g. keras)")
    conv.add_argument("--dtype", metavar="DTYPE", help="cast floating tensors, e.g. bfloat16")
    conv.add_argument("--include-optimizer", action="store_true",
                      help="keep optimizer state, the object graph, save_counter and global_step")
    conv.add_argument("--names", choices=("object", "full"),
                      help="names of TF2 variables in OUT: object (the default, as `ls` shows them): model-side "
                      "object paths; full: full names (Keras 3: layer paths). A map file's 'names' applies when "
                      "this is not given. TF1 tensors keep their names")
    conv.add_argument("--keras-config", metavar="FILE", help=_KERAS_CONFIG_HELP)
    conv.add_argument("--dry-run", action="store_true", help="print the plan and the report, write nothing")
    conv.add_argument("--force", action="store_true", help="replace OUT if it exists (after success)")
    dist = conv.add_argument_group("distributed", "one process of a jax.distributed conversion (every "
                                   "process runs the same command; see docs/convert.md)")
    dist.add_argument("--distributed", action="store_true",
                      help="join a jax.distributed program (from the environment, or the flags below)")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (JAX_COORDINATOR_ADDRESS)")
    dist.add_argument("--num-processes", type=int, metavar="N", help="how many processes (JAX_NUM_PROCESSES)")
    dist.add_argument("--process-id", type=int, metavar="I", help="this process's index (JAX_PROCESS_ID)")
    dist.add_argument("--timeout", type=float, default=600.0, metavar="S",
                      help="seconds to wait for the other processes to join, and at each step; a process "
                           "missing longer is named and every process stops (default 600)")
    conv.set_defaults(func=_convert)

    ls = sub.add_parser("ls", parents=[common], help="list a checkpoint's tensors",
                        description="List a checkpoint's tensors: name, shape, dtype, size, shard.")
    ls.add_argument("ckpt", metavar="CKPT", help="checkpoint prefix, directory or URL")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--keras-config", metavar="FILE", help=_KERAS_CONFIG_HELP)
    ls.add_argument("--names", choices=("object", "key", "full"), default="object",
                    help="how TF2 variables are named: object (the default, the names convert gives them): "
                    "model-side object paths; key: checkpoint keys, as tf.train.list_variables shows them "
                    "(--json always has them); full: full names. TF1 tensors have one name")
    ls.add_argument("--preset", metavar="NAME", help="also show what each tensor becomes under a preset "
                    "(see 'tf2flax presets')")
    ls.set_defaults(func=_ls)

    sug = sub.add_parser("suggest", parents=[common], help="infer the map for a Flax model (mapping='auto')",
                         description="Infer the assignment map from a checkpoint to the Flax leaves described "
                         "in TARGET, print every decision with its evidence, and save it as a --map file. "
                         "Refuses (exit 2) when anything is undecided. See docs/automap.md.")
    sug.add_argument("ckpt", metavar="CKPT", help="checkpoint prefix, directory or URL")
    sug.add_argument("target", metavar="TARGET", help="JSON/YAML file of the Flax leaves: {path: {shape, dtype}}")
    sug.add_argument("-o", "--output", metavar="MAP", help="write the map file here (YAML; JSON for *.json)")
    sug.add_argument("--map", metavar="FILE", help="hints: a map file (map entries pinned, rules, preset, transforms)")
    sug.add_argument("--leave", metavar="REGEX", action="append", default=[],
                     help="target paths (regex) to leave unset, e.g. a new head")
    sug.add_argument("--json", action="store_true", help="machine-readable output")
    sug.set_defaults(func=_suggest)

    presets = sub.add_parser("presets", parents=[common], help="list the presets",
                             description="List the presets (renames for a framework's or model family's naming).")
    presets.set_defaults(func=_presets)
    return parser


def _add_common(parser: argparse.ArgumentParser, default: Any) -> None:
    """``--debug`` and ``--quiet``, accepted before and after the subcommand."""
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks and library logs")
    parser.add_argument("--quiet", action="store_true", default=default,
                        help="no progress bar, no summary, no native libraries' chatter (warnings and errors "
                        "still print)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Example::

        main(["ls", "/runs/bert/model.ckpt-1000", "--json"])
    """
    args = build_parser().parse_args(argv)
    args.from_command_line = argv is None  # (a distributed convert then runs under a supervisor)
    if not args.debug:
        logging.getLogger("absl").setLevel(logging.ERROR)
        warnings.showwarning = _one_line_warning(warnings.showwarning)
    try:
        with command_line_wording():
            return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("tf2flax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tf2flax ls ... | head`: the reader left, nothing more to say
        sys.stderr.close()
        return 0
    except (Tf2FlaxError, OSError) as e:
        if args.debug:  # the traceback, then the same line and status as without --debug
            traceback.print_exc()
        print(f"tf2flax: error: {redact_url(str(e), limit=2000)}", file=sys.stderr)
        return 2


def _printable(text: str) -> str:
    """``text`` with unprintable characters escaped as Python writes them (``\\n``, ``\\x1b``, ``\\u202e``):
    a tensor name in human output cannot move the cursor, recolour or reorder the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _printable_lines(text: str, names: Sequence[str] = ()) -> str:
    """``text`` line by line through :func:`_printable`, each of ``names`` (tensor names, output paths)
    escaped whole first: a name holding a newline stays on its line instead of splitting it."""
    odd = sorted({n for n in names if not n.isprintable()}, key=len, reverse=True)
    if odd:
        text = re.compile("|".join(map(re.escape, odd))).sub(lambda m: _printable(m.group(0)), text)
    return "\n".join(_printable(line) for line in text.split("\n"))


def _names_in(ckpt: Any, result: Any) -> list[str]:
    """Every checkpoint tensor name and output path a conversion's report may show."""
    from . import Checkpoint, open_checkpoint

    names = list(result.plan.entries) + [name for name, _ in result.left_out]
    if isinstance(ckpt, Checkpoint):
        return names + ckpt.names
    try:
        with open_checkpoint(ckpt) as opened:
            names += opened.names
    except Tf2FlaxError:  # shown as they come; convert itself read it
        pass
    return names


def _one_line_warning(show: Any) -> Any:
    """``warnings.showwarning`` that prints tf2flax's own warnings as one ``tf2flax: warning:`` line."""
    from .formats.locate import LocationWarning

    def one_line(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        if issubclass(category, LocationWarning):
            print(f"tf2flax: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    return one_line


# ---- convert -----------------------------------------------------------------------------------------

def _convert(args: argparse.Namespace) -> int:
    if args.distributed:
        from .conversion.launch import resolve_cluster
        from .conversion.supervise import is_supervised, supervise

        if not args.timeout > 0:
            raise DistributedError(f"--timeout {args.timeout:g}: expected a number of seconds > 0")
        cluster = resolve_cluster(args.coordinator, args.num_processes, args.process_id)
        if args.from_command_line and not is_supervised():  # before jax starts any thread
            return supervise(cluster.index, cluster.count, cluster.coordinator, debug=args.debug)

    import jax

    from . import open_checkpoint
    from .conversion import ConvertWarning, convert, load_map_file

    if "JAX_PLATFORMS" not in os.environ:  # converting needs no accelerator: leave GPUs/TPUs alone
        jax.config.update("jax_platforms", "cpu")

    options: dict[str, Any] = load_map_file(args.map) if args.map else {}
    if args.preset:
        options["preset"] = args.preset
    if args.names:
        options["names"] = args.names
    primary = True
    ckpt = open_checkpoint(args.ckpt, keras_config=args.keras_config) if args.keras_config else args.ckpt
    # gloo (JAX's CPU collectives) prints '[Gloo] Rank 0 is connected ...' on stdout at every save
    with _native_lines_dropped(args.distributed and not args.debug):
        if args.distributed:
            from .conversion import check_conversion
            from .conversion.launch import join_distributed

            # This process's own inputs first: a bad one ends it now, and the others name it as missing.
            check_conversion(ckpt, args.out, dtype=args.dtype, include_optimizer=args.include_optimizer,
                             dry_run=args.dry_run, force=args.force, **options)
            primary = join_distributed(cluster, args.timeout, announce=None if args.quiet else lambda text: print(
                f"tf2flax: {text}", file=sys.stderr, flush=True)) == 0
            options.update(distributed=True, timeout=args.timeout)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvertWarning)
            result = convert(ckpt, args.out, dtype=args.dtype, include_optimizer=args.include_optimizer,
                             dry_run=args.dry_run, force=args.force, progress=not args.quiet, **options)
        names = _names_in(ckpt, result) if primary and (caught or args.dry_run) else []
    for w in caught:
        if issubclass(w.category, ConvertWarning) and primary:
            print(f"tf2flax: warning: {_printable_lines(redact_url(str(w.message), limit=2000), names)}",
                  file=sys.stderr)
    if args.distributed and not args.quiet and not args.dry_run:
        print(f"tf2flax: {result.share_summary()}", file=sys.stderr)
    if not primary:
        return 0
    if args.dry_run:
        print(_printable_lines(result.describe(), names))
    if not args.quiet or args.dry_run:
        print(_printable_lines(result.summary()))
    return 0


def _native_lines_dropped(drop: bool) -> Any:
    if not drop:
        return contextlib.nullcontext()
    from .conversion.native_output import dropping_native_lines

    return dropping_native_lines()


# ---- suggest -----------------------------------------------------------------------------------------

def _suggest(args: argparse.Namespace) -> int:
    from .conversion.mapfile import load_map_file
    from .mapping.auto import AutoMap
    from .mapping.auto.target_file import read_target_file
    from .restore import suggest_mapping

    options = load_map_file(args.map) if args.map else {}
    hints = AutoMap(map=options.pop("mapping", None), leave=args.leave)
    options = {k: v for k, v in options.items() if k in ("rules", "preset", "transforms", "part_axis")}
    auto = suggest_mapping(args.ckpt, read_target_file(args.target), hints, **options)
    if args.json:
        json.dump(auto.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print(_printable_lines(auto.summary()))
    auto.check(cli=True)
    if args.output:
        auto.save(args.output)
        if not args.json:
            print(f"wrote {_printable(args.output)}")
    return 0


# ---- presets -----------------------------------------------------------------------------------------

def _presets(args: argparse.Namespace) -> int:
    from .mapping.presets import describe_presets

    print("\n".join(describe_presets()))
    return 0


# ---- ls ----------------------------------------------------------------------------------------------

def _ls(args: argparse.Namespace) -> int:
    from . import open_checkpoint
    from .formats.dtypes import dtype_name
    from .naming import display_names

    ckpt = open_checkpoint(args.ckpt, keras_config=args.keras_config)
    shown = display_names(ckpt, args.names)
    becomes = _preset_names(args.preset, ckpt) if args.preset else None
    rows = []
    for key in ckpt.names:
        info = ckpt.info(key)
        rows.append({
            "name": shown[key], "key": key, "shape": list(info.shape),
            "dtype": dtype_name(info.dtype_enum),
            "bytes": info.nbytes, "shards": list(info.shards), "sliced": info.is_sliced,
            "slices": len(info.slices), **(becomes[key] if becomes else {}),
        })
    rows.sort(key=lambda r: r["name"])
    total = {"tensors": len(rows), "bytes": sum(r["bytes"] for r in rows), "shards": ckpt.num_shards,
             "sliced": sum(r["sliced"] for r in rows)}
    if args.json:
        json.dump({"checkpoint": ckpt.path, "opened": ckpt.opened,
                   "format": "tf1" if ckpt.object_graph is None else "tf2",
                   "tensors": rows, "total": total}, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return 0
    print(_printable(ckpt.opened))
    _print_table(rows, total)
    return 0


def _preset_names(preset: str, ckpt: Any) -> dict[str, dict]:
    from .mapping.presets import preview

    return preview(preset, ckpt)


def _becomes(row: dict) -> str:
    """The ``becomes`` cell: the renamed name, ``[i]`` for a stacked layer, the scanned name after ``|``,
    and why a load leaves the tensor out, if it does."""
    if row["becomes"] is None:
        return "(dropped)"
    name = row["becomes"] + (f"[{row['layer']}]" if row["layer"] is not None else "")
    name += f" | {row['scanned']}" if row["scanned"] else ""
    return name + (f" ({row['left_out']})" if row["left_out"] else "")


def _print_table(rows: list[dict], total: dict) -> None:
    header = ("name", "shape", "dtype", "size", "shard", "sliced")
    cells = [(_printable(r["name"]), "[" + ", ".join(map(str, r["shape"])) + "]", r["dtype"], human_bytes(r["bytes"]),
              ",".join(map(str, r["shards"])), f"yes ({r['slices']})" if r["sliced"] else "") for r in rows]
    if rows and "becomes" in rows[0]:
        header += ("becomes",)
        cells = [c + (_printable(_becomes(r)),) for c, r in zip(cells, rows)]
    footer = (f"{total['tensors']} tensors, {human_bytes(total['bytes'])} in {total['shards']} shard(s)"
              + (f", {total['sliced']} sliced" if total["sliced"] else ""))
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(caption=footer, caption_justify="left")
        for h in header:
            table.add_column(h, justify="right" if h == "size" else "left")
        for c in cells:
            table.add_row(*map(Text, c))  # Text: names and shapes are not rich markup
        Console().print(table)
        return
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
    for line in [header, *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
    print(footer)
