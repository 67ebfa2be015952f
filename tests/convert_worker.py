"""One process of the two-process distributed-convert tests (run by test_distributed_convert.py).

Usage: convert_worker.py PROCESS_ID PORT CHECKPOINT OUT RESULT_DIR [kill|rules|auto|solo]. Every process calls
``tf2flax.convert(..., distributed=True)`` with the same arguments and writes what it read to
RESULT_DIR/result_<id>.json. With ``kill``, process 1 kills itself (SIGKILL) while reading its share;
with ``rules``, sharding rules over a (2, 4) mesh place two of the leaves; with ``auto``, ``distributed``
is left out (it follows from jax.distributed); with ``solo``, ``distributed=False`` is passed, and the
error is written to RESULT_DIR/error_<id>.txt.
"""

import json
import os
import signal
import sys
from pathlib import Path

import jax

process_id, port, ckpt_path, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
result_dir, mode = Path(sys.argv[5]), (sys.argv[6] if len(sys.argv) > 6 else "")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                           heartbeat_timeout_seconds=5)

import tf2flax  # noqa: E402
from tf2flax.conversion import distributed  # noqa: E402

assert jax.device_count() == 8 and jax.local_device_count() == 4
if mode == "kill" and process_id == 1:
    distributed.Team.read = lambda self, group: os.kill(os.getpid(), signal.SIGKILL)
options = {}
if mode == "rules":  # placement given as sharding rules over a mesh of all 8 devices, as in init_params
    from jax.sharding import PartitionSpec as P

    options = {"mesh": jax.make_mesh((2, 4), ("x", "y")),
               "sharding_rules": [(r"emb$", P("x", "y")), (r"proj$", P(None, ("x", "y")))]}
if mode == "solo":
    try:
        tf2flax.convert(ckpt_path, out, distributed=False)
    except tf2flax.errors.DistributedError as e:
        (result_dir / f"error_{process_id}.txt").write_text(str(e))
    jax.distributed.shutdown()
    sys.exit(0)
if mode != "auto":
    options["distributed"] = True
result = tf2flax.convert(ckpt_path, out, timeout=60, **options)
(result_dir / f"result_{process_id}.json").write_text(json.dumps(
    {"bytes_read": result.bytes_read, "tensors": result.tensors, "bytes": result.bytes, "out": result.out}))
jax.distributed.shutdown()
