"""One process of the two-process optimizer-state test (run by test_opt_state.py).

Usage: opt_state_worker.py PROCESS_ID PORT CHECKPOINT OUT_DIR. Loads ``w`` and its Adam moments onto a
(4, 2) mesh spanning both processes, checks every addressable shard against the slots read whole,
and writes the bytes ``init_opt_state`` read to OUT_DIR/bytes_read_<id>.
"""

import sys
from pathlib import Path

import jax

process_id, port, ckpt_path, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import tf2flax  # noqa: E402

assert jax.device_count() == 8 and jax.local_device_count() == 4
mesh = jax.make_mesh((4, 2), ("x", "y"))
abstract = {"w": jax.ShapeDtypeStruct((64, 16), np.float32, sharding=NamedSharding(mesh, P("x", "y")))}
params = tf2flax.init_params(ckpt_path, {"w": "w"}, abstract, progress=False)
tx = optax.adam(0.01)
state, report = tf2flax.init_opt_state(ckpt_path, {"w": "w"}, params, jax.eval_shape(tx.init, params),
                                       strict=True, return_report=True, progress=False)
reference = tf2flax.open_checkpoint(ckpt_path)
for field, slot in (("mu", "w/Adam"), ("nu", "w/Adam_1")):
    array = getattr(state[0], field)["w"]
    expected = reference.read(slot)
    assert array.sharding.is_equivalent_to(params["w"].sharding, 2) and len(array.addressable_shards) == 4
    for shard in array.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), expected[shard.index])
assert report.count == 2
(out_dir / f"bytes_read_{process_id}").write_text(str(report.stats.bytes_read))
jax.distributed.shutdown()
