"""The versions every benchmark prints beside its ratios: TensorFlow, jax, orbax, numpy, cores.

Example::

    print(versions())   # 'TensorFlow 2.21.0, jax 0.10.2, orbax-checkpoint 0.12.8, numpy 2.3.5, 2 cores'
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version


def versions() -> str:
    """Installed versions of the anchors' libraries (read from package metadata, nothing imported)."""
    parts = []
    for label, dist in (("TensorFlow", "tensorflow-cpu"), ("jax", "jax"), ("orbax-checkpoint", "orbax-checkpoint"),
                        ("tensorstore", "tensorstore"), ("numpy", "numpy")):
        for name in (dist, "tensorflow") if dist == "tensorflow-cpu" else (dist,):
            try:
                parts.append(f"{label} {version(name)}")
                break
            except PackageNotFoundError:
                continue
    return ", ".join(parts) + f", {os.cpu_count()} cores"
