"""Optimizer state: TensorFlow optimizer slots into optax states (see docs/optimizer-state.md).

``slots`` finds which checkpoint tensors are which parameter's slots (no jax needed);
``optax_state`` fills an optax state from them.

Example::

    from tf2flax.optimizer import init_opt_state
    opt_state = init_opt_state(ckpt, {"bert/": "params/bert/"}, params, optax.adamw(1e-4).init(params))
"""

from .optax_state import OptStateReport, init_opt_state
from .slots import Slots, find_slots

__all__ = ["OptStateReport", "Slots", "find_slots", "init_opt_state"]
