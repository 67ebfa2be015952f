"""One process of the two-process sharded-restore test (run by test_sharding.py).

Usage: sharded_worker.py PROCESS_ID PORT CHECKPOINT OUT_DIR. Loads the checkpoint onto a (4, 2)
mesh spanning both processes, checks every addressable shard against TensorFlow's values read
with tf2flax's own full read, and writes the bytes it read to OUT_DIR/bytes_read_<id>.
"""

import sys
from pathlib import Path

import jax

process_id, port, ckpt_path, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import tf2flax  # noqa: E402

assert jax.device_count() == 8 and jax.local_device_count() == 4
mesh = jax.make_mesh((4, 2), ("x", "y"))
specs = {"emb": P("x", "y"), "proj": P("x", None), "w": P("x", "y"), "b": P("x")}
shapes = {"emb": (64, 12), "proj": (12, 40), "w": (16, 24), "b": (24,)}
abstract = {"params": {k: jax.ShapeDtypeStruct(shapes[k], np.float32, sharding=NamedSharding(mesh, specs[k]))
                       for k in shapes}}
params, result = tf2flax.init_params(ckpt_path, {"model/": "params/"}, abstract, return_report=True)
bytes_read = result.stats.bytes_read
reference = tf2flax.open_checkpoint(ckpt_path)
for key, array in params["params"].items():
    expected = reference.read(f"model/{key}")
    assert len(array.addressable_shards) == 4
    for shard in array.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), expected[shard.index])
(out_dir / f"bytes_read_{process_id}").write_text(str(bytes_read))
jax.distributed.shutdown()
