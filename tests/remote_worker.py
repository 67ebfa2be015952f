"""One process of the two-process remote restore test (run by test_remote.py).

Usage: remote_worker.py PROCESS_ID PORT URL LOCAL_DIR OUT_DIR. Loads the checkpoint at URL onto a
(4, 2) mesh spanning both processes, checks every addressable shard against the same checkpoint read
from LOCAL_DIR, and writes the bytes the reader asked for to OUT_DIR/bytes_read_<id>.
"""

import sys
from pathlib import Path

import jax

process_id, port, url, local_dir, out_dir = sys.argv[1:6]
process_id, out_dir = int(process_id), Path(out_dir)
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import tf2flax  # noqa: E402

assert jax.device_count() == 8 and jax.local_device_count() == 4
mesh = jax.make_mesh((4, 2), ("x", "y"))
specs = {"emb": P("x", None), "proj": P("x", "y"), "w": P("x", "y"), "b": P("x")}
reference = tf2flax.open_checkpoint(local_dir)
abstract = {"params": {k: jax.ShapeDtypeStruct(reference.shape(f"model/{k}"), np.float32,
                                               sharding=NamedSharding(mesh, specs[k])) for k in specs}}
params, result = tf2flax.init_params(url, {"model/": "params/"}, abstract, return_report=True)
for key, array in params["params"].items():
    expected = reference.read(f"model/{key}")
    assert len(array.addressable_shards) == 4
    for shard in array.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), expected[shard.index])
(out_dir / f"bytes_read_{process_id}").write_text(str(result.stats.bytes_read))
jax.distributed.shutdown()
