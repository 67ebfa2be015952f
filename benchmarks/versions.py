"""The versions every benchmark prints beside its ratios: Python, TensorFlow, jax, orbax, numpy, ml_dtypes, cores.

Example::

    print(versions())   # 'Python 3.11.7, TensorFlow 2.21.0, jax 0.10.2, ..., numpy 2.4.6, ml_dtypes 0.7.0, 2 cores'
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version


def versions() -> str:
    """Installed versions of the anchors' libraries (read from package metadata, nothing imported)."""
    parts = [f"Python {platform.python_version()}"]
    for label, dist in (("TensorFlow", "tensorflow-cpu"), ("jax", "jax"), ("orbax-checkpoint", "orbax-checkpoint"),
                        ("tensorstore", "tensorstore"), ("numpy", "numpy"),
                        ("ml_dtypes", "ml_dtypes")):
        for name in (dist, "tensorflow") if dist == "tensorflow-cpu" else (dist,):
            try:
                parts.append(f"{label} {version(name)}")
                break
            except PackageNotFoundError:
                continue
    return ", ".join(parts) + f", {os.cpu_count()} cores"
