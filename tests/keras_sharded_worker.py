"""One process of the two-process sharded Keras restore test (run by test_keras.py).

Usage: keras_sharded_worker.py PROCESS_ID PORT KERAS_FILE OUT_DIR. Loads the ``wide`` model's Dense
layer from a ``.keras`` file onto a (4, 2) mesh spanning both processes, checks every addressable
shard against h5py's own read of the file, and writes the bytes it read to OUT_DIR/bytes_read_<id>.
"""

import sys
import zipfile
from pathlib import Path

import jax

process_id, port, keras_file, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import tf2flax  # noqa: E402

assert jax.device_count() == 8 and jax.local_device_count() == 4
with zipfile.ZipFile(keras_file) as archive, archive.open("model.weights.h5") as member:
    with h5py.File(member, "r") as f:  # the Dense layer named "wide" is the first of the Sequential
        reference = {"kernel": f["layers/dense/vars/0"][()], "bias": f["layers/dense/vars/1"][()]}
mesh = jax.make_mesh((4, 2), ("x", "y"))
specs = {"kernel": P("x", "y"), "bias": P("x")}
abstract = {"params": {"wide": {k: jax.ShapeDtypeStruct(reference[k].shape, np.float32,
                                                        sharding=NamedSharding(mesh, specs[k])) for k in specs}}}
params, result = tf2flax.init_params(keras_file, {"wide/": "params/wide/"}, abstract, return_report=True,
                                     progress=False)
for key, array in params["params"]["wide"].items():
    assert len(array.addressable_shards) == 4
    for shard in array.addressable_shards:
        assert np.asarray(shard.data).tobytes() == reference[key][shard.index].tobytes(), key
(out_dir / f"bytes_read_{process_id}").write_text(str(result.stats.bytes_read))
jax.distributed.shutdown()
