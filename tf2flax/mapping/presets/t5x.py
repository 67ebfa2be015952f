"""The ``t5x`` preset: Mesh-TensorFlow T5 checkpoints -> T5X's parameter tree.

Names are exactly those of T5X's ``checkpoint_importer`` (``t5_importer`` rules, then its
shared-relative-position-bias correction), parameters under ``target/``:

====================================================================  ===================================================
Mesh-TF T5 (T5.1.0 and T5.1.1; ``transformer/`` = decoder-only)       T5X
====================================================================  ===================================================
``shared/embedding``                                                  ``target/token_embedder/embedding``
``{encoder,decoder}/embedding`` (untied towers)                        ``target/<tower>/token_embedder/embedding``
``<tower>/block_NNN/layer_000/SelfAttention/relative_attention_bias``  ``target/<tower>/relpos_bias/rel_embedding``
                                                                      (shared: only block 0 has one), else
                                                                      ``target/<tower>/layers_N/relpos_bias/rel_embedding``
``encoder/block_NNN/layer_LLL/SelfAttention/{q,k,v,o}``               ``target/encoder/layers_N/attention/{query,key,value,out}/kernel``
``decoder/block_NNN/layer_LLL/{SelfAttention,EncDecAttention}/q``     ``target/decoder/layers_N/{self_attention,encoder_decoder_attention}/query/kernel``
``<tower>/block_NNN/layer_LLL/DenseReluDense/{wi,wi_0,wi_1,wo}/kernel``  ``target/<tower>/layers_N/mlp/{wi,wi_0,wi_1,wo}/kernel``
``<tower>/block_NNN/layer_LLL/{rms,layer}_norm/scale``                 ``target/<tower>/layers_N/pre_..._layer_norm/scale``
``<tower>/{rms,final_layer}_norm/scale``                               ``target/<tower>/{encoder,decoder}_norm/scale``
``{decoder,transformer}/logits/kernel`` (untied logits)                ``target/decoder/logits_dense/kernel``
``..._slot_{v,vr,vc}`` (Adafactor)                                    ``state/param_states/.../{v,v_row,v_col}`` (skipped)
``global_step``                                                       ``state/step`` (skipped)
====================================================================  ===================================================

Values pass through unchanged. Scanned models (T5X ``scan_layers``) have ``target/<tower>/layers/...``
leaves stacked along axis 1 (T5X's ``param_scan_axis``): the preset adds those names too.

Example::

    params = tf2flax.init_params(path, None, abstract_t5x_state, preset="t5x")   # {'target': ...}
"""

from __future__ import annotations

import re
from typing import Sequence

from ..rules import Rule, compile_rules, layer_index
from .base import Preset

_SLOTS = {"_slot_vc": "v_col", "_slot_vr": "v_row", "_slot_v": "v"}
_SLOT = r"(_slot_vc|_slot_vr|_slot_v)?"
_TOWER = r"(encoder|decoder|transformer)"
_NORMS = {"encoder": ["pre_attention_layer_norm", "pre_mlp_layer_norm"],
          "decoder": ["pre_self_attention_layer_norm", "pre_cross_attention_layer_norm", "pre_mlp_layer_norm"],
          "transformer": ["pre_self_attention_layer_norm", "pre_mlp_layer_norm"]}
_RELPOS = re.compile(rf"^{_TOWER}/block_(\d+)/layer_000/SelfAttention/relative_attention_bias{_SLOT}$")


def _tower(name: str) -> str:
    return "decoder" if name == "transformer" else name


def _place(path: str, slot: str | None) -> str:
    """``target/<path>``, or the Adafactor slot ``state/param_states/<path>/<v|v_row|v_col>``."""
    return f"state/param_states/{path}/{_SLOTS[slot]}" if slot else f"target/{path}"


def _attention(m: re.Match) -> str:
    tower, block, kind, matrix, slot = m.groups()
    name = "attention" if tower == "encoder" else {
        "SelfAttention": "self_attention", "EncDecAttention": "encoder_decoder_attention"}[kind]
    matrix = {"q": "query", "k": "key", "v": "value", "o": "out"}[matrix]
    return _place(f"{_tower(tower)}/layers_{int(block)}/{name}/{matrix}/kernel", slot)


def _mlp(m: re.Match) -> str:
    tower, block, io, num, slot = m.groups()
    return _place(f"{_tower(tower)}/layers_{int(block)}/mlp/{io}{'_' + num if num else ''}/kernel", slot)


def _layer_norm(m: re.Match) -> str:
    tower, block, sublayer, slot = m.groups()
    norms = _NORMS[tower]
    if int(sublayer) >= len(norms):  # not a pre-layer norm T5X knows: left as it is (reported unused)
        return m.group(0)
    return _place(f"{_tower(tower)}/layers_{int(block)}/{norms[int(sublayer)]}/scale", slot)


def _final_norm(m: re.Match) -> str:
    tower, slot = m.groups()
    norm = "encoder_norm" if tower == "encoder" else "decoder_norm"
    return _place(f"{_tower(tower)}/{norm}/scale", slot)


def _relpos_rules(names: Sequence[str]) -> tuple[Rule, ...]:
    """Relative position bias: one per layer, unless only block 0 has one (shared, as T5X decides)."""
    blocks = [layer_index(m.group(2), n) for n in names if (m := _RELPOS.match(n))]
    shared = max(blocks, default=0) == 0

    def relpos(m: re.Match) -> str:
        tower, block, slot = m.groups()
        layer = "" if shared else f"layers_{int(block)}/"
        return _place(f"{_tower(tower)}/{layer}relpos_bias/rel_embedding", slot)

    return compile_rules([(_RELPOS, relpos)])


T5X = Preset(
    "t5x",
    compile_rules([
        (r"^global_step$", "state/step"),
        (rf"^shared/embedding{_SLOT}$", lambda m: _place("token_embedder/embedding", m.group(1))),
        (rf"^{_TOWER}/embedding{_SLOT}$",
         lambda m: _place(f"{_tower(m.group(1))}/token_embedder/embedding", m.group(2))),
        (rf"^{_TOWER}/block_(\d+)/layer_\d+/(SelfAttention|EncDecAttention)/(q|k|v|o){_SLOT}$", _attention),
        (rf"^{_TOWER}/block_(\d+)/layer_\d+/DenseReluDense/(wi|wo)(?:_(\d+))?/kernel{_SLOT}$", _mlp),
        (rf"^{_TOWER}/block_(\d+)/layer_(\d+)/(?:layer|rms)_norm/scale{_SLOT}$", _layer_norm),
        (rf"^{_TOWER}/(?:final_layer|rms)_norm/scale{_SLOT}$", _final_norm),
        (rf"^(?:decoder|transformer)/logits/kernel{_SLOT}$", lambda m: _place("decoder/logits_dense/kernel", m.group(1))),
    ]),
    description="Mesh-TensorFlow T5 (T5.1.0/T5.1.1) -> T5X's tree under target/, as t5x's checkpoint_importer "
                "names it; scanned: target/<tower>/layers/... stacked along axis 1",
    dynamic=_relpos_rules,
    scan=compile_rules([(r"^(target|state/param_states)/(encoder|decoder)/layers_{i}/", r"\1/\2/layers/")]),
    stack_axis=1,
    skip=lambda name: re.search(r"_slot_(v|vr|vc)$", name) is not None,
)
