"""One process of the two-process stacked-restore test (run by test_stacking.py).

Usage: stacked_worker.py PROCESS_ID PORT CHECKPOINT OUT_DIR. Stacks the checkpoint's 4 layers into
leaves whose layer axis is split over the processes of a (2, 4) mesh (each process holds 2 layers),
checks every addressable shard against the checkpoint's own per-layer values, and writes the bytes it
read to OUT_DIR/bytes_read_<id>.
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
mesh = jax.make_mesh((2, 4), ("layers", "model"))
reference = tf2flax.open_checkpoint(ckpt_path)
shapes = {"attention/kernel": (4, 8, 8), "attention/bias": (4, 8), "ffn/kernel": (4, 8, 16)}
specs = {"attention/kernel": P("layers", None, "model"), "attention/bias": P("layers"), "ffn/kernel": P("layers")}
abstract = {"layers": {}}
for name, shape in shapes.items():
    scope, leaf = name.split("/")
    abstract["layers"].setdefault(scope, {})[leaf] = jax.ShapeDtypeStruct(
        shape, np.float32, sharding=NamedSharding(mesh, specs[name]))
params, result = tf2flax.init_params(ckpt_path, {"bert/encoder/layer_{i}/": "layers/"}, abstract, return_report=True)
for name in shapes:
    scope, leaf = name.split("/")
    array = params["layers"][scope][leaf]
    expected = np.stack([reference.read(f"bert/encoder/layer_{i}/{name}") for i in range(4)])
    layers = set()
    for shard in array.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), expected[shard.index])
        layers.update(range(*shard.index[0].indices(4)))
    assert len(layers) == 2, layers
(out_dir / f"bytes_read_{process_id}").write_text(str(result.stats.bytes_read))
jax.distributed.shutdown()
