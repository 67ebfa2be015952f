"""Keras files as checkpoints: ``.keras``, ``.weights.h5`` and Keras 2 ``.h5``, with Keras as the judge.

The files are written by Keras 3 itself (``keras_writers.py``, run once per session in a subprocess
so that this process never imports TensorFlow), with seeded random weights; Keras also records the
variable paths and values of the model it loads back. Every path Keras shows must be listed with its
shape, and every read must be bitwise equal to Keras's value.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

import tf2flax
from keras_writers import MODELS, load_expected
from servers import RangeHTTPServer
from tf2flax.errors import CheckpointNotFoundError, CorruptCheckpointError, Tf2FlaxError, UnsupportedFormatError
from tf2flax.formats.keras_names import keras3_names
from tf2flax.naming import default_names

REAL = Path(__file__).parent / "data" / "realworld" / "keras_churn_model_weights_h5" / "model.weights.h5"
WRITER = Path(__file__).with_name("keras_writers.py")


@pytest.fixture(scope="session")
def kdir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keras_files")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(WRITER), str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _check_all(ckpt, expected):
    listed = dict(ckpt.list_variables())
    for name, value in expected.items():
        assert name in listed, (name, sorted(listed))
        assert listed[name] == list(value.shape), name
        got = ckpt.read(name)
        assert got.dtype == value.dtype and got.shape == value.shape, name
        assert got.tobytes() == value.tobytes(), name


@pytest.mark.parametrize("model", sorted(MODELS))
def test_keras_archive_lists_keras_paths(kdir, model):
    expected = load_expected(kdir / f"{model}.keras.expected")
    with tf2flax.open_checkpoint(kdir / f"{model}.keras") as ckpt:
        assert ckpt.opened.startswith("Keras 3 .keras archive: ") and "read in place" in ckpt.opened
        _check_all(ckpt, expected)
        model_names = [n for n in ckpt.names if not n.startswith("optimizer/")]
        assert sorted(model_names) == sorted(expected)  # nothing else listed: no stored path left over
        # the stored paths work too
        assert ckpt.aliases
        for stored, name in list(ckpt.aliases.items())[:5]:
            assert np.array_equal(ckpt.read(stored), ckpt.read(name))
        optimizer = load_expected(kdir / f"{model}.optimizer.expected")
        _check_all(ckpt, optimizer)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_weights_h5_stored_paths_and_keras_paths_with_config(kdir, model):
    expected = load_expected(kdir / f"{model}.keras.expected")
    with tf2flax.open_checkpoint(kdir / f"{model}.weights.h5") as plain:
        assert plain.opened.startswith("Keras 3 weights file (.weights.h5): ")
        assert all("vars/" in n for n in plain.names)
        assert not set(plain.names) & set(expected)
    for config in (kdir / f"{model}.keras", _config_json(kdir, model)):
        with tf2flax.open_checkpoint(kdir / f"{model}.weights.h5", keras_config=config) as ckpt:
            assert "with Keras names" in ckpt.opened
            _check_all(ckpt, expected)


def _config_json(kdir: Path, model: str) -> Path:
    path = kdir / f"{model}.config.json"
    with zipfile.ZipFile(kdir / f"{model}.keras") as z:
        path.write_bytes(z.read("config.json"))
    return path


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("kind", ["h5", "k2weights.h5"])
def test_legacy_h5_names_from_attributes(kdir, model, kind):
    expected = load_expected(kdir / f"{model}.h5.expected")
    with tf2flax.open_checkpoint(kdir / f"{model}.{kind}") as ckpt:
        what = "full model" if kind == "h5" else "weights only"
        assert ckpt.opened.startswith(f"Keras HDF5 file (Keras 2 layout, {what}")
        # Keras 3's legacy writer names weights by their paths in the saving model (`wide_model/wide/kernel`,
        # listed from the layer on: `wide/kernel`)
        listed = [n for n in ckpt.names if not n.startswith("optimizer/")]
        nested = {}
        for name, value in expected.items():
            matches = [n for n in listed if n == name or n.endswith("/" + name) or name.endswith("/" + n)]
            assert len(matches) == 1, (name, listed)
            nested[matches[0]] = value
        _check_all(ckpt, nested)
        assert sorted(nested) == sorted(listed)
        if kind == "h5":
            assert any(n.startswith("optimizer/") for n in ckpt.names)


def test_real_keras2_files_from_tf_keras(kdir):
    if not (kdir / "tf_keras.h5").exists():
        pytest.skip("tf_keras is not installed (it is not a test extra: it requires the full tensorflow package, which would install beside tensorflow-cpu; pip install --no-deps tf_keras to run this)")
    expected = {name[:-2]: v for name, v in load_expected(kdir / "tf_keras.expected").items()}
    # a nested model's weights are named under the layer that holds them
    for name in ("tf_keras.h5", "tf_keras.weights_only.h5"):  # the nested Sequential's weights as Keras names them
        with tf2flax.open_checkpoint(kdir / name) as ckpt:
            assert ckpt.opened.startswith("Keras HDF5 file (Keras 2 layout")
            _check_all(ckpt, expected)
            assert sorted(n for n in ckpt.names if not n.startswith("optimizer/")) == sorted(expected)
    # a Keras application nested as a base model: its weights as tf_keras names them (conv1/kernel, not
    # mobilenetv2_0.35_32/conv1/kernel)
    transfer = {name[:-2]: v for name, v in load_expected(kdir / "tf_keras_transfer.expected").items()}
    with tf2flax.open_checkpoint(kdir / "tf_keras_transfer.h5") as ckpt:
        _check_all(ckpt, transfer)
        assert sorted(n for n in ckpt.names if not n.startswith("optimizer/")) == sorted(transfer)
    # tf.keras's .keras: named as tf_keras names the weights (w.name without :0); its metrics are bookkeeping
    with tf2flax.open_checkpoint(kdir / "tf_keras.keras") as ckpt:
        _check_all(ckpt, expected)
        kept = {n.name for n in default_names(ckpt) if n.left_out is None}
        assert kept == set(expected) and any(n.startswith("metrics/") for n in ckpt.names)


def test_listing_reads_no_tensor_data(kdir):
    expected = load_expected(kdir / "wide.keras.expected")
    total = sum(v.nbytes for v in expected.values())
    with tf2flax.open_checkpoint(kdir / "wide.keras") as ckpt:
        ckpt.list_variables()
        for name in ckpt.names:
            ckpt.info(name)
        assert ckpt.stats.bytes_read < total / 4, (ckpt.stats.bytes_read, total)


@pytest.mark.parametrize("file", ["wide.keras", "wide.weights.h5", "wide.h5"])
def test_region_reads_read_only_the_region(kdir, file):
    expected = load_expected(kdir / "wide.keras.expected")["wide/kernel"]  # (256, 512) float32
    config = {"keras_config": kdir / "wide.keras"} if file.endswith("weights.h5") else {}
    with tf2flax.open_checkpoint(kdir / file, **config) as ckpt:
        view = ckpt.get_slice("wide/kernel")
        before = ckpt.stats.bytes_read
        rows = view[10:20]
        assert rows.tobytes() == expected[10:20].tobytes()
        assert ckpt.stats.bytes_read - before < 4 * expected[10:20].nbytes
        for index in (np.s_[3], np.s_[:, 7], np.s_[100:101, 200:300], np.s_[..., -1], np.s_[5:5]):
            assert np.array_equal(ckpt.read("wide/kernel", index), expected[index]), index


def test_chunked_and_compressed_datasets(kdir, tmp_path):
    """The same layout rewritten with chunked, gzip/lzf/shuffle-filtered datasets reads the same."""
    src = kdir / "wide.weights.h5"
    dst = tmp_path / "chunked.weights.h5"
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        def copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                options = dict(chunks=(16,) + obj.shape[1:], compression="gzip", shuffle=True) \
                    if obj.ndim == 2 and obj.shape[0] >= 16 else {}
                if obj.ndim == 1 and obj.shape[0] >= 8:
                    options = dict(chunks=(8,), compression="lzf", fletcher32=True)
                b.create_dataset(name, data=obj[()], **options)
        a.visititems(copy)
    expected = load_expected(kdir / "wide.keras.expected")
    with tf2flax.open_checkpoint(dst, keras_config=kdir / "wide.keras") as ckpt:
        _check_all(ckpt, expected)
        before = ckpt.stats.bytes_read
        part = ckpt.read("wide/kernel", np.s_[32:48])  # one 16-row chunk of 16 in total
        assert part.tobytes() == expected["wide/kernel"][32:48].tobytes()
        assert ckpt.stats.bytes_read - before < expected["wide/kernel"].nbytes / 4


def test_deflated_archive_member_is_decompressed(kdir, tmp_path):
    deflated = tmp_path / "deflated.keras"
    with zipfile.ZipFile(kdir / "cnn.keras") as a, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as b:
        for name in a.namelist():
            b.writestr(name, a.read(name))
    with tf2flax.open_checkpoint(deflated) as ckpt:
        assert "decompressed" in ckpt.opened
        _check_all(ckpt, load_expected(kdir / "cnn.keras.expected"))


def test_zip_bomb_member_is_refused_without_inflating(tmp_path):
    """A deflated model.weights.h5 of 192 MiB of zeros (about 200 KB stored): refused, not inflated."""
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("model.weights.h5", "w", force_zip64=True) as member:
            for _ in range(3):
                member.write(bytes(64 << 20))
    assert path.stat().st_size < 1 << 20
    began = time.perf_counter()
    message = _raises_cleanly(path, UnsupportedFormatError)
    assert "compressed" in message and "unzip" in message and time.perf_counter() - began < 2


def test_real_weights_file():
    """A user's model.weights.h5 (a 12-64-32-1 Dense network trained with Adam, 4500 steps)."""
    with tf2flax.open_checkpoint(REAL) as ckpt:
        shapes = dict(ckpt.list_variables())
        assert shapes["layers/dense/vars/0"] == [12, 64] and shapes["layers/dense_1/vars/0"] == [64, 32]
        assert shapes["layers/dense_2/vars/0"] == [32, 1] and shapes["layers/dense_2/vars/1"] == [1]
        assert int(ckpt.read("optimizer/vars/0")) == 4500
        assert int(tf2flax.load_variable(REAL, "optimizer/vars/0")) == 4500
        assert dict(tf2flax.list_variables(REAL)) == shapes
        assert ckpt.read("optimizer/vars/0").dtype == np.int64
        with h5py.File(REAL, "r") as f:
            for name in ckpt.names:
                assert ckpt.read(name).tobytes() == np.asarray(f[name][()]).tobytes()
        kept = [n.name for n in default_names(ckpt) if n.left_out is None]
        assert kept == [n for n in ckpt.names if n.startswith("layers/")]
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"name": "input_layer", "batch_shape": [None, 12]}},
        *({"class_name": "Dense", "config": {"name": n, "units": u, "use_bias": True}}
          for n, u in (("dense", 64), ("dense_1", 32), ("dense_2", 1)))]}}
    with tf2flax.open_checkpoint(REAL, keras_config=config) as ckpt:
        assert dict(ckpt.list_variables())["dense_1/kernel"] == [64, 32]


def test_urls(kdir):
    """Over HTTP range requests: the size comes from the file (zip end record, HDF5 superblock), HDF5's
    small metadata reads are served from cached blocks, and a region read asks for its bytes only."""
    with RangeHTTPServer(kdir) as http:
        expected = load_expected(kdir / "mobilenet.keras.expected")
        with tf2flax.open_checkpoint(http.url + "mobilenet.keras") as ckpt:
            assert ckpt.opened.startswith(f"Keras 3 .keras archive: {http.url}mobilenet.keras")
            assert len(http.log) < 60, len(http.log)  # not one request per HDF5 metadata read (1600)
            _check_all(ckpt, expected)
        with tf2flax.open_checkpoint(http.url + "mobilenet.weights.h5",
                                     keras_config=http.url + "mobilenet.keras") as ckpt:
            _check_all(ckpt, expected)
        with tf2flax.open_checkpoint(http.url + "cnn.h5") as ckpt:
            assert "stem_bn/moving_mean" in ckpt.names
        wide = load_expected(kdir / "wide.keras.expected")["wide/kernel"]
        with tf2flax.open_checkpoint(http.url + "wide.keras") as ckpt:
            before = http.bytes_sent
            assert ckpt.read("wide/kernel", np.s_[200:240]).tobytes() == wide[200:240].tobytes()
            assert http.bytes_sent - before < wide.nbytes / 2


def test_sharded_init_params_on_8_devices(kdir):
    assert jax.device_count() == 8
    expected = load_expected(kdir / "wide.keras.expected")
    mesh = jax.make_mesh((4, 2), ("x", "y"))
    specs = {"kernel": P("x", "y"), "bias": P("x")}
    abstract = {"params": {"wide": {k: jax.ShapeDtypeStruct(expected[f"wide/{k}"].shape, np.float32,
                                                            sharding=NamedSharding(mesh, specs[k]))
                                    for k in specs}}}
    with tf2flax.open_checkpoint(kdir / "wide.keras") as ckpt:
        plan = tf2flax.plan_params(ckpt, {"wide/": "params/wide/"}, abstract)
        assert plan is not None
        params = tf2flax.init_params(ckpt, {"wide/": "params/wide/"}, abstract, progress=False)
    for key, array in params["params"]["wide"].items():
        value = expected[f"wide/{key}"]
        for shard in array.addressable_shards:
            assert np.asarray(shard.data).tobytes() == value[shard.index].tobytes()


def test_two_processes_each_read_their_half(kdir, tmp_path):
    """Real multi-process JAX (jax.distributed on 127.0.0.1): 2 processes x 4 CPU devices, a (4, 2) mesh;
    each process reads its devices' rows and columns of the .keras file's kernel, about half of it."""
    worker = Path(__file__).with_name("keras_sharded_worker.py")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, str(worker), str(i), str(port), str(kdir / "wide.keras"),
                               str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    expected = load_expected(kdir / "wide.keras.expected")
    total = expected["wide/kernel"].nbytes + expected["wide/bias"].nbytes
    for i in range(2):
        read = int((tmp_path / f"bytes_read_{i}").read_text())
        assert 0.45 * total <= read <= 0.65 * total, (i, read, total)  # half, plus the file's metadata


def test_keras_preset_loads_a_flax_tree(kdir):
    """preset="keras" on Keras paths: gamma/beta -> scale/bias, moving stats -> batch_stats mean/var."""
    expected = load_expected(kdir / "cnn.keras.expected")

    def leaf(name):
        return jax.ShapeDtypeStruct(expected[name].shape, np.float32)

    abstract = {"params": {"stem": {"kernel": leaf("stem/kernel"), "bias": leaf("stem/bias")},
                           "stem_bn": {"scale": leaf("stem_bn/gamma"), "bias": leaf("stem_bn/beta")}},
                "batch_stats": {"stem_bn": {"mean": leaf("stem_bn/moving_mean"),
                                            "var": leaf("stem_bn/moving_variance")}}}
    with tf2flax.open_checkpoint(kdir / "cnn.keras") as ckpt:
        params = tf2flax.init_params(ckpt, None, abstract, preset="keras", progress=False)
    pairs = {("params", "stem", "kernel"): "stem/kernel", ("params", "stem_bn", "scale"): "stem_bn/gamma",
             ("params", "stem_bn", "bias"): "stem_bn/beta", ("batch_stats", "stem_bn", "mean"): "stem_bn/moving_mean",
             ("batch_stats", "stem_bn", "var"): "stem_bn/moving_variance"}
    for (collection, layer, leaf_name), name in pairs.items():
        assert np.asarray(params[collection][layer][leaf_name]).tobytes() == expected[name].tobytes(), name


def test_convert_leaves_out_optimizer(kdir, tmp_path):
    with tf2flax.open_checkpoint(kdir / "mlp.keras") as ckpt:
        names = default_names(ckpt)
        kept = {n.name for n in names if n.left_out is None}
        assert kept == set(load_expected(kdir / "mlp.keras.expected"))
        assert all(n.left_out == "optimizer state" for n in names if n.name.startswith("optimizer/"))
    result = tf2flax.convert(kdir / "mlp.keras", tmp_path / "out")
    assert (tmp_path / "out").is_dir() and result is not None


def test_ls_says_what_it_opened(kdir):
    for file, first in (("mlp.keras", "Keras 3 .keras archive: "), ("mlp.h5", "Keras HDF5 file (Keras 2 layout"),
                        ("mlp.weights.h5", "Keras 3 weights file")):
        done = subprocess.run([sys.executable, "-m", "tf2flax", "ls", str(kdir / file)], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith(first), lines[0]
        assert "h5py" not in done.stderr


def test_cli_keras_config(kdir, tmp_path):
    """ls and convert --keras-config: a .weights.h5 with its model's Keras paths; optimizer left out."""
    tool = [sys.executable, "-m", "tf2flax"]
    done = subprocess.run([*tool, "ls", str(kdir / "cnn.weights.h5"), "--keras-config", str(kdir / "cnn.keras")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "with Keras names" in done.stdout.splitlines()[0] and "stem_bn/moving_mean" in done.stdout
    done = subprocess.run([*tool, "convert", str(kdir / "cnn.weights.h5"), str(tmp_path / "out"), "--dry-run",
                           "--keras-config", str(kdir / "cnn.keras")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    planned = {line.split(" <- ")[0].strip() for line in done.stdout.splitlines() if " <- " in line}
    assert planned == set(load_expected(kdir / "cnn.keras.expected"))
    done = subprocess.run([*tool, "ls", str(kdir / "cnn.weights.h5"), "--keras-config", str(tmp_path / "no.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("tf2flax: error: ") and "no.json" in done.stderr


def test_importing_and_listing_v2_does_not_load_h5py(tf2_ckpt):
    code = ("import sys, tf2flax; assert 'h5py' not in sys.modules; "
            f"tf2flax.open_checkpoint({tf2_ckpt.prefix!r}).list_variables(); "
            "assert 'h5py' not in sys.modules and 'tf2flax.formats.keras' not in sys.modules; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


# ---- damaged and hostile files ----------------------------------------------------------------

def _raises_cleanly(path, error=Tf2FlaxError, **kwargs):
    with pytest.raises(error) as info:
        with tf2flax.open_checkpoint(path, **kwargs) as ckpt:
            for name in ckpt.names:
                ckpt.read(name)
    return str(info.value)


@pytest.mark.parametrize("cut", [8, 100, 1000, 0.5, 0.9, -1])
def test_truncated_files(kdir, tmp_path, cut):
    for source in ("cnn.weights.h5", "cnn.keras", "cnn.h5"):
        data = (kdir / source).read_bytes()
        if isinstance(cut, float):
            n = int(len(data) * cut)
        else:
            n = cut if cut > 0 else len(data) + cut
        path = tmp_path / f"cut_{source}"
        path.write_bytes(data[:n])
        message = _raises_cleanly(path)
        assert str(path) in message


def test_not_keras_hdf5_is_called_what_it_is(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(10))
        f.create_group("stuff").create_dataset("y", data=np.ones(3))
    message = _raises_cleanly(path, UnsupportedFormatError)
    assert "an HDF5 file with no Keras weights layout" in message and "Keras HDF5" not in message


def test_zip_without_weights(tmp_path):
    path = tmp_path / "notes.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    assert "no model.weights.h5" in _raises_cleanly(path, UnsupportedFormatError)


def test_damaged_zip(kdir, tmp_path):
    data = bytearray((kdir / "mlp.keras").read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 16:end + 20] = (len(data) + 1000).to_bytes(4, "little")  # central directory offset past the end
    path = tmp_path / "damaged.keras"
    path.write_bytes(bytes(data))
    _raises_cleanly(path, CorruptCheckpointError)


def test_external_link_is_refused(tmp_path):
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f.create_dataset("vars/0", data=np.arange(4.0))
    path = tmp_path / "link.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers/dense/vars").create_dataset("0", data=np.ones(2))
        f["layers/dense_1"] = h5py.ExternalLink(str(secret), "/")
    assert "external link" in _raises_cleanly(path, UnsupportedFormatError)


def test_external_storage_is_refused(tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(8, dtype="<f4").tobytes())
    path = tmp_path / "ext.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers/dense/vars").create_dataset("0", shape=(8,), dtype="<f4", external=[(str(raw), 0, 32)])
    assert "external file" in _raises_cleanly(path, UnsupportedFormatError)


def test_virtual_dataset_is_refused(tmp_path):
    source = tmp_path / "src.h5"
    with h5py.File(source, "w") as f:
        f.create_dataset("data", data=np.arange(6.0))
    path = tmp_path / "virtual.weights.h5"
    layout = h5py.VirtualLayout(shape=(6,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(source), "data", shape=(6,))
    with h5py.File(path, "w") as f:
        f.create_group("layers/dense/vars").create_virtual_dataset("0", layout)
    assert "virtual dataset" in _raises_cleanly(path, UnsupportedFormatError)


def test_unknown_filter_is_refused(tmp_path):
    path = tmp_path / "filter.weights.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("layers/dense/vars")
        ds = group.create_dataset("0", shape=(64,), dtype="f4", chunks=(16,), compression=32004,
                                  allow_unknown_filter=True)
        ds.id.write_direct_chunk((0,), b"\0" * 64)
    assert "filter 32004" in _raises_cleanly(path, UnsupportedFormatError)


def test_declared_size_beyond_the_file(tmp_path):
    """A dataset declaring 4 TB (never written): refused before anything is allocated."""
    path = tmp_path / "huge.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers/dense/vars").create_dataset("0", shape=(1 << 20, 1 << 20), dtype="f4",
                                                           chunks=(1024, 1024))
    assert "declares shape" in _raises_cleanly(path, CorruptCheckpointError)


def test_contiguous_data_past_the_end(kdir, tmp_path):
    """A contiguous dataset whose data address points past the end of the file."""
    src = kdir / "wide.weights.h5"
    data = bytearray(src.read_bytes())
    with h5py.File(src, "r") as f:
        ds = f["layers/dense/vars/0"]
        offset, size = ds.id.get_offset(), ds.id.get_storage_size()
    path = tmp_path / "short.weights.h5"
    path.write_bytes(bytes(data[:offset + size // 2]))
    _raises_cleanly(path, CorruptCheckpointError)


def test_keras_config_on_a_tf_checkpoint_is_refused(tf2_ckpt):
    with pytest.raises(UnsupportedFormatError, match="not a Keras file"):
        tf2flax.open_checkpoint(tf2_ckpt.prefix, keras_config={"class_name": "Sequential"})


def test_wrong_config_keeps_stored_paths(kdir):
    """A config that does not fit (another model): layers it does not describe keep their stored paths."""
    with tf2flax.open_checkpoint(kdir / "cnn.weights.h5", keras_config=kdir / "mlp.keras") as ckpt:
        expected = load_expected(kdir / "cnn.keras.expected")
        listed = dict(ckpt.list_variables())
        for name in ckpt.names:
            ckpt.read(name)
        assert len(listed) == len(expected) + len(load_expected(kdir / "cnn.optimizer.expected"))


# ---- fuzzing ----------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
MUTATIONS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=16)


def _open_and_read_all(path: Path) -> None:
    """Open, list and read everything; a Tf2FlaxError is the only way to fail, within a few seconds."""
    began = time.perf_counter()
    try:
        with tf2flax.open_checkpoint(path) as ckpt:
            ckpt.list_variables()
            for name in ckpt.names:
                ckpt.read(name)
    except Tf2FlaxError as e:
        assert str(path) in str(e)
    assert time.perf_counter() - began < 5


@pytest.mark.parametrize("source", ["mlp.weights.h5", "mlp.keras", "mlp.h5"])
@FUZZ
@given(mutations=MUTATIONS, head=st.booleans(), cut=st.none() | st.floats(0, 1))
def test_fuzzed_files_fail_cleanly(kdir, tmp_path, source, mutations, head, cut):
    """Flipped bytes (anywhere, or in the first 4 KiB where HDF5 keeps most metadata) and truncation."""
    data = bytearray((kdir / source).read_bytes())
    span = min(len(data), 4096) if head else len(data)
    for where, value in mutations:
        data[int(where * span)] = value
    if cut is not None:
        data = data[:int(cut * len(data))]
    path = tmp_path / f"fuzzed_{source}"
    path.write_bytes(bytes(data))
    _open_and_read_all(path)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8)
                    | st.sampled_from(["Dense", "Sequential", "Functional", "MultiHeadAttention", "GRU", "RNN",
                                       "Bidirectional", "TimeDistributed", "BatchNormalization", "layers", "config",
                                       "class_name", "name", "cell", "layer", "backward_layer"]),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["class_name", "config", "layers", "name", "cell", "layer", "backward_layer",
                                         "use_bias", "scale", "center"]), inner, max_size=5),
                    max_leaves=40)


@settings(max_examples=400, deadline=None)
@given(config=JSON, counts=st.dictionaries(st.sampled_from(["", "layers/dense", "layers/sequential",
                                                            "layers/sequential/layers/dense", "layers/gru/cell",
                                                            "layers/multi_head_attention/query_dense"]),
                                           st.integers(0, 5)))
def test_names_from_any_config_never_crash(config, counts):
    """Whatever config.json holds (it is input too), naming gives stored path -> name, or nothing."""
    names = keras3_names(config if isinstance(config, dict) else {"class_name": "Functional", "config": config},
                         counts)
    for stored, name in names.items():
        assert stored.rsplit("/vars/", 1)[0] in counts and isinstance(name, str) and name


def test_deeply_nested_config_is_bounded():
    config = {"class_name": "Dense", "config": {"name": "d"}}
    for _ in range(5000):
        config = {"class_name": "Sequential", "config": {"name": "s", "layers": [config]}}
    assert keras3_names(config, {"": 0}) == {}


def test_keras2_names_of_nested_models():
    """A nested model's weights keep Keras's names; only names two weights share get their layer prefixed."""
    from tf2flax.formats.keras_names import keras2_names

    weights = {"conv1/conv1/kernel:0": ("conv1", "conv1/kernel:0"),
               "resnet50/conv1_conv/kernel:0": ("resnet50", "conv1_conv/kernel:0"),
               "a/dense/bias:0": ("a", "dense/bias:0"), "b/dense/bias:0": ("b", "dense/bias:0"),
               "dense/seq/dense/kernel": ("dense", "seq/dense/kernel")}
    assert keras2_names(weights) == {"conv1/conv1/kernel:0": "conv1/kernel",
                                     "resnet50/conv1_conv/kernel:0": "conv1_conv/kernel",
                                     "a/dense/bias:0": "a/dense/bias", "b/dense/bias:0": "b/dense/bias",
                                     "dense/seq/dense/kernel": "dense/kernel"}


def test_many_tiny_chunks_are_listed_in_one_pass(tmp_path):
    """20,000 one-element chunks (an 840 KB file): checked in well under a second, not minutes."""
    path = tmp_path / "chunks.weights.h5"
    values = np.arange(20000, dtype="<f4")
    with h5py.File(path, "w") as f:
        f.create_group("layers/dense/vars").create_dataset("0", data=values, chunks=(1,))
    began = time.perf_counter()
    with tf2flax.open_checkpoint(path) as ckpt:
        assert ckpt.list_variables() == [("layers/dense/vars/0", [20000])]
        assert time.perf_counter() - began < 5
        assert np.array_equal(ckpt.read("layers/dense/vars/0", np.s_[100:110]), values[100:110])


def test_sharded_weights(kdir, tmp_path):
    """save_weights(..., max_shard_size=): a .weights.json naming sibling .h5 shards, read as one checkpoint."""
    expected = load_expected(kdir / "mobilenet.keras.expected")
    manifest = kdir / "mobilenet.sharded.weights.json"
    with tf2flax.open_checkpoint(manifest, keras_config=kdir / "mobilenet.keras") as ckpt:
        assert ckpt.opened.startswith("Keras 3 sharded weights (.weights.json, ") and ckpt.num_shards >= 2
        _check_all(ckpt, expected)
        assert len({ckpt.info(n).shards for n in expected}) == ckpt.num_shards
    with tf2flax.open_checkpoint(manifest) as ckpt:
        model = [n for n in ckpt.names if not n.startswith("optimizer/")]
        assert all(n.startswith("layers/") for n in model) and len(model) == len(expected)
    # a manifest may name only files beside it, and all of them must be there
    for shard, error in (("../secret.weights.h5", CorruptCheckpointError),
                         ("gone.weights.h5", CheckpointNotFoundError)):
        bad = tmp_path / "bad.weights.json"
        bad.write_text(json.dumps({"weight_map": {"/layers/dense/vars": shard}}))
        _raises_cleanly(bad, error)
