"""Session-wide fixtures: real TensorFlow checkpoints, each written once per test session.

Only generally useful fixtures live here; the writers themselves are in ``tf_writers.py``.
"""

import os

# Sharding tests need 8 CPU devices; this must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses
from pathlib import Path

import pytest

import tf_writers


@dataclasses.dataclass(frozen=True)
class WrittenCheckpoint:
    """A checkpoint written by TensorFlow: its directory, prefix and (when known) the values."""

    directory: Path
    prefix: str
    expected: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)


@pytest.fixture(scope="session")
def tf1_ckpt(tmp_path_factory) -> WrittenCheckpoint:
    """TF1 ``Saver(sharded=True)`` on two CPU devices, with partitioned variables (prefix ``model-7``)."""
    d = tmp_path_factory.mktemp("tf1_saver")
    prefix, expected = tf_writers.write_tf1_saver(d)
    return WrittenCheckpoint(d, prefix, expected)


@pytest.fixture(scope="session")
def tf2_ckpt(tmp_path_factory) -> WrittenCheckpoint:
    """``tf.train.Checkpoint.save`` x2 with ``MaxShardSizePolicy``; ``extra['first']`` is ckpt-1."""
    d = tmp_path_factory.mktemp("tf2_sharded")
    latest, first, expected = tf_writers.write_tf2_sharded(d)
    return WrittenCheckpoint(d, latest, expected, {"first": first})


@pytest.fixture(scope="session")
def zoo_ckpt(tmp_path_factory) -> WrittenCheckpoint:
    """Every dtype, strings, scalars, zero-size tensors and odd names (SaveV2, no state file)."""
    d = tmp_path_factory.mktemp("zoo")
    prefix, expected = tf_writers.write_zoo(d)
    return WrittenCheckpoint(d, prefix, expected)


@pytest.fixture(scope="session")
def keras3_ckpt(tmp_path_factory) -> WrittenCheckpoint:
    """A Keras 3 Sequential model (Dense, BatchNormalization, Dense) saved with its Adam optimizer."""
    d = tmp_path_factory.mktemp("keras3")
    return WrittenCheckpoint(d, tf_writers.write_keras3(d))


@pytest.fixture(scope="session")
def many_ckpt(tmp_path_factory) -> WrittenCheckpoint:
    """6000 tensors: an index with several data blocks."""
    d = tmp_path_factory.mktemp("many")
    return WrittenCheckpoint(d, tf_writers.write_many(d, 6000))


@pytest.fixture(scope="session")
def v1_ckpt(tmp_path_factory) -> WrittenCheckpoint:
    """A V1-format checkpoint (``SaverDef.V1``), which the reader must refuse."""
    d = tmp_path_factory.mktemp("v1")
    return WrittenCheckpoint(d, tf_writers.write_v1(d))
