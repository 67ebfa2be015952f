"""Protobuf message classes for the checkpoint's metadata, built from descriptors in code.

Field numbers follow TensorFlow's ``tensor_bundle.proto``, ``tensor_shape.proto``,
``tensor_slice.proto``, ``versions.proto``, ``trackable_object_graph.proto``,
``checkpoint_state.proto``, ``tensor.proto`` and ``saved_tensor_slice.proto`` (V1 checkpoints);
only the fields a reader needs are declared (unknown fields are skipped by the protobuf runtime).

Example::

    entry = BundleEntryProto.FromString(value)
    entry.dtype, [d.size for d in entry.shape.dim]
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError as ProtoDecodeError

from ..errors import CorruptCheckpointError

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_TYPES = {
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "fixed32": _F.TYPE_FIXED32,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
    "enum": _F.TYPE_INT32,  # enums read as plain ints: unknown values stay visible
}

# message name -> [(field name, number, type or message name, repeated, oneof index or None)]
_MESSAGES: dict[str, list[tuple[str, int, str, bool, int | None]]] = {
    "VersionDef": [("producer", 1, "int32", False, None), ("min_consumer", 2, "int32", False, None),
                   ("bad_consumers", 3, "int32", True, None)],
    "BundleHeaderProto": [("num_shards", 1, "int32", False, None), ("endianness", 2, "enum", False, None),
                          ("version", 3, "VersionDef", False, None)],
    "Dim": [("size", 1, "int64", False, None), ("name", 2, "string", False, None)],
    "TensorShapeProto": [("dim", 2, "Dim", True, None), ("unknown_rank", 3, "bool", False, None)],
    "Extent": [("start", 1, "int64", False, None), ("length", 2, "int64", False, 0)],
    "TensorSliceProto": [("extent", 1, "Extent", True, None)],
    "BundleEntryProto": [("dtype", 1, "enum", False, None), ("shape", 2, "TensorShapeProto", False, None),
                         ("shard_id", 3, "int32", False, None), ("offset", 4, "int64", False, None),
                         ("size", 5, "int64", False, None), ("crc32c", 6, "fixed32", False, None),
                         ("slices", 7, "TensorSliceProto", True, None)],
    "ObjectReference": [("node_id", 1, "int32", False, None), ("local_name", 2, "string", False, None)],
    "SerializedTensor": [("name", 1, "string", False, None), ("full_name", 2, "string", False, None),
                         ("checkpoint_key", 3, "string", False, None)],
    "SlotVariableReference": [("original_variable_node_id", 1, "int32", False, None),
                              ("slot_name", 2, "string", False, None),
                              ("slot_variable_node_id", 3, "int32", False, None)],
    "TrackableObject": [("children", 1, "ObjectReference", True, None),
                        ("attributes", 2, "SerializedTensor", True, None),
                        ("slot_variables", 3, "SlotVariableReference", True, None)],
    "TrackableObjectGraph": [("nodes", 1, "TrackableObject", True, None)],
    # tensor.proto: the value fields a V1 checkpoint's saved slices use
    "TensorProto": [("dtype", 1, "enum", False, None), ("tensor_shape", 2, "TensorShapeProto", False, None),
                    ("tensor_content", 4, "bytes", False, None), ("float_val", 5, "float", True, None),
                    ("double_val", 6, "double", True, None), ("int_val", 7, "int32", True, None),
                    ("string_val", 8, "bytes", True, None), ("scomplex_val", 9, "float", True, None),
                    ("int64_val", 10, "int64", True, None), ("bool_val", 11, "bool", True, None),
                    ("dcomplex_val", 12, "double", True, None), ("half_val", 13, "int32", True, None),
                    ("uint32_val", 16, "uint32", True, None), ("uint64_val", 17, "uint64", True, None)],
    # saved_tensor_slice.proto (V1 checkpoints)
    "SavedSliceMeta": [("name", 1, "string", False, None), ("shape", 2, "TensorShapeProto", False, None),
                       ("type", 3, "enum", False, None), ("slice", 4, "TensorSliceProto", True, None)],
    "SavedTensorSliceMeta": [("tensor", 1, "SavedSliceMeta", True, None), ("versions", 2, "VersionDef", False, None)],
    "SavedSlice": [("name", 1, "string", False, None), ("slice", 2, "TensorSliceProto", False, None),
                   ("data", 3, "TensorProto", False, None)],
    "SavedTensorSlices": [("meta", 1, "SavedTensorSliceMeta", False, None), ("data", 2, "SavedSlice", False, None)],
    "CheckpointState": [("model_checkpoint_path", 1, "string", False, None),
                        ("all_model_checkpoint_paths", 2, "string", True, None),
                        ("all_model_checkpoint_timestamps", 3, "double", True, None),
                        ("last_preserved_timestamp", 4, "double", False, None)],
}
_ONEOFS = {"Extent": ["has_length"]}
_PACKAGE = "tf2flax.tf"


def _build() -> dict[str, type]:
    file = descriptor_pb2.FileDescriptorProto(name="tf2flax_tf.proto", package=_PACKAGE, syntax="proto3")
    for msg_name, fields in _MESSAGES.items():
        msg = file.message_type.add(name=msg_name)
        for oneof in _ONEOFS.get(msg_name, []):
            msg.oneof_decl.add(name=oneof)
        for name, number, kind, repeated, oneof_index in fields:
            field = msg.field.add(name=name, number=number, label=_REP if repeated else _OPT)
            if kind in _TYPES:
                field.type = _TYPES[kind]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{kind}"
            if oneof_index is not None:
                field.oneof_index = oneof_index
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in _MESSAGES}


_CLASSES = _build()
BundleHeaderProto = _CLASSES["BundleHeaderProto"]
BundleEntryProto = _CLASSES["BundleEntryProto"]
TensorSliceProto = _CLASSES["TensorSliceProto"]
TrackableObjectGraph = _CLASSES["TrackableObjectGraph"]
CheckpointState = _CLASSES["CheckpointState"]
SavedTensorSlices = _CLASSES["SavedTensorSlices"]


def decode(message_class: type, value: bytes, where: str, what: str) -> Any:
    """``value`` parsed as a ``message_class``; CorruptCheckpointError naming ``where`` and ``what`` if it
    does not decode.

    Example::

        entry = decode(BundleEntryProto, raw, "/ckpt/model.index", "tensor 'w': entry")
    """
    message = message_class()
    try:
        message.ParseFromString(value)
    except ProtoDecodeError:
        raise CorruptCheckpointError(f"{where}: {what} does not decode as a {message_class.__name__}") from None
    return message
