"""The Open Inference Protocol (KServe v2) inference body, and Triton's binary tensor data extension, both ways.

A request is a JSON object (``inputs``: name, datatype, shape, then ``data`` in JSON, or the parameter
``binary_data_size`` and the tensor's bytes after the JSON); with binary tensors the JSON's length is the header
``Inference-Header-Content-Length`` and the tensors follow it in input order, little-endian, row major, a BYTES
element as a 4-byte little-endian length and its bytes. Answers the same way: an output is binary when its request
entry says ``"binary_data": true`` or the request's parameter ``binary_data_output`` is true (tritonclient sets it
when it names no outputs). Everything the header declares is checked before a byte of tensor data is touched:
shapes, element counts (at most ``MAX_ELEMENTS``), the binary sizes against the body; tensors are then views into the
body (no copy), so memory is bounded by the body limit. The server parses requests (``read_body``, ``parse_infer``)
and writes answers (``encode_response``); the client (service/client.py) writes requests and reads answers.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.classify.tensor_errors import TensorError
from service.classify.upload import IncompleteUpload, UploadTooLarge
from service.http.body_guard import check_json

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_ELEMENTS = 2**31 - 1  # per tensor: one past it is refused before anything is allocated
MAX_DIMS = 8
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
DATATYPES = frozenset({*DTYPES, "BYTES"})


@dataclass(frozen=True)
class Tensor:
    """One input as declared; its data a view into the body (binary) or the parsed JSON ``data``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: memoryview | None  # binary data, exactly ``binary_data_size`` bytes
    data: Any = None  # JSON data (a flat or nested list) when not binary

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class InferBody:
    id: str | None
    parameters: dict[str, Any]
    inputs: list[Tensor]
    outputs: dict[str, bool] | None  # the outputs asked for -> binary; None: every output
    binary_output: bool  # the request's ``binary_data_output``: outputs not named otherwise are binary

    def binary(self, name: str) -> bool:
        return self.outputs.get(name, self.binary_output) if self.outputs is not None else self.binary_output


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, max_bytes: int) -> bytearray:
    """The whole body: ``UploadTooLarge`` past ``max_bytes`` (from Content-Length at once, else as it arrives),
    ``IncompleteUpload`` when it ends short of its Content-Length. Held once (no copy: tensors are views of it)."""
    declared = int(content_length) if content_length is not None and content_length.isdigit() else None
    if declared is not None and declared > max_bytes:
        raise UploadTooLarge(max_bytes)
    body = bytearray()
    async for chunk in chunks:
        if len(body) + len(chunk) > max_bytes:
            raise UploadTooLarge(max_bytes)
        body += chunk
    if declared is not None and len(body) < declared:
        raise IncompleteUpload(f"the body ended after {len(body)} of the {declared} bytes its Content-Length announced")
    return body


def _bad(message: str) -> TensorError:
    return TensorError("invalid_inference_request", message)


def parse_infer(
    body: bytes | bytearray, header_length: str | None, max_json_bytes: int, max_depth: int
) -> InferBody:
    """The request's JSON (at most ``max_json_bytes``, nested at most ``max_depth``) and views of its tensors."""
    size = len(body)
    if header_length is None:
        json_size = size
    elif not header_length.isdigit() or not 0 < int(header_length) <= size:
        raise _bad(f"{HEADER_LENGTH} is {header_length[:24]!r}; the body has {size} bytes")
    else:
        json_size = int(header_length)
    if json_size > max_json_bytes:
        raise TensorError("tensor_too_large", f"the JSON part has {json_size} bytes; the limit is {max_json_bytes} "
                          "(send tensors as binary data)")
    head = bytes(body[:json_size])  # the JSON part only (capped)
    check_json(head, max_depth)
    request = json.loads(head)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise _bad("the body must be a JSON object with a non-empty `inputs` list")
    raw = memoryview(body)[json_size:]
    inputs, used = [], 0
    for entry in request["inputs"]:
        tensor, used = _tensor(entry, raw, used)
        inputs.append(tensor)
    if used != len(raw):
        raise _bad(f"{len(raw)} bytes of binary data follow the JSON; its inputs declare {used}")
    parameters = _object(request.get("parameters"), "parameters")
    return InferBody(
        _optional_str(request.get("id"), "id"), parameters, inputs, _outputs(request.get("outputs")),
        _flag(parameters.get("binary_data_output", False), "binary_data_output"),
    )


def _tensor(entry: Any, raw: memoryview, offset: int) -> tuple[Tensor, int]:
    """One input's declaration checked (name, datatype, shape, element count), and its binary bytes' view."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise _bad("each input must be an object with a `name`")
    name, datatype, shape = entry["name"], entry.get("datatype"), entry.get("shape")
    if datatype not in DATATYPES:
        raise TensorError("tensor_datatype", f"input {name!r}: unknown datatype {str(datatype)[:16]!r}")
    dims = shape if isinstance(shape, list) and len(shape) <= MAX_DIMS else None
    if dims is None or not all(type(d) is int and d >= 0 for d in dims):
        raise TensorError("tensor_shape", f"input {name!r}: `shape` must be a list of at most {MAX_DIMS} sizes >= 0")
    elements = math.prod(dims)  # exact (Python integers): 2^31 declared elements never overflow here
    if elements > MAX_ELEMENTS:
        raise TensorError("tensor_too_large", f"input {name!r} declares {elements} elements; at most {MAX_ELEMENTS}")
    size = _object(entry.get("parameters"), f"{name}.parameters").get("binary_data_size")
    if size is None:
        if "data" not in entry:
            raise _bad(f"input {name!r} has neither `data` nor a `binary_data_size`")
        return Tensor(name, datatype, tuple(dims), None, entry["data"]), offset
    if type(size) is not int or size < 0:
        raise _bad(f"input {name!r}: binary_data_size must be an integer >= 0")
    if offset + size > len(raw):
        raise _bad(f"input {name!r} declares {size} bytes of binary data; only {len(raw) - offset} are left")
    if datatype != "BYTES" and size != elements * DTYPES[datatype].itemsize:
        raise TensorError("tensor_shape_mismatch", f"input {name!r}: shape {dims} of {datatype} is "
                          f"{elements * DTYPES[datatype].itemsize} bytes; binary_data_size says {size}")
    return Tensor(name, datatype, tuple(dims), raw[offset : offset + size]), offset + size


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"`{what}` must be an object")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _bad(f"`{what}` must be a string")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"`{what}` must be true or false")
    return value


def _outputs(value: Any) -> dict[str, bool] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in value):
        raise _bad("`outputs` must be a list of objects with a `name`")
    return {o["name"]: _flag(_object(o.get("parameters"), "outputs.parameters").get("binary_data", False),
                             "binary_data") for o in value}


def array(tensor: Tensor, datatype: str) -> np.ndarray:
    """A numeric input as an array of its declared shape (a view into the body when binary)."""
    if tensor.datatype != datatype:
        raise TensorError("tensor_datatype", f"input {tensor.name!r} must be {datatype}, got {tensor.datatype}")
    dtype = DTYPES[datatype]
    if tensor.raw is not None:  # its size was checked against the shape by parse_infer
        return np.frombuffer(tensor.raw, dtype).reshape(tensor.shape)
    try:
        values = np.asarray(tensor.data, dtype=np.float64)  # the JSON part is capped: bounded too
    except (TypeError, ValueError):
        raise TensorError("tensor_shape_mismatch", f"input {tensor.name!r}: `data` is not a list of numbers") from None
    if values.size != tensor.elements:
        raise TensorError("tensor_shape_mismatch", f"input {tensor.name!r}: shape {list(tensor.shape)} has "
                          f"{tensor.elements} elements; `data` has {values.size}")
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is not None and not ((values >= info.min) & (values <= info.max) & (values == np.round(values))).all():
        raise TensorError("tensor_datatype", f"input {tensor.name!r}: values outside {datatype}")
    return values.astype(dtype).reshape(tensor.shape)


def byte_elements(tensor: Tensor) -> list[bytes]:
    """A BYTES input's elements (binary: each a 4-byte little-endian length and its bytes, filling the data)."""
    if tensor.datatype != "BYTES":
        raise TensorError("tensor_datatype", f"input {tensor.name!r} must be BYTES, got {tensor.datatype}")
    if tensor.raw is None:
        data = tensor.data
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise TensorError("tensor_shape_mismatch", f"input {tensor.name!r}: JSON BYTES data must be strings")
        items = [d.encode("utf-8") for d in data]
    else:
        items, at, raw = [], 0, tensor.raw
        while at < len(raw) and len(items) < tensor.elements:
            length = int.from_bytes(raw[at : at + 4], "little") if at + 4 <= len(raw) else None
            if length is None or at + 4 + length > len(raw):
                raise TensorError("tensor_shape_mismatch", f"input {tensor.name!r}: element {len(items)} runs past "
                                  "its binary data")
            items.append(bytes(raw[at + 4 : at + 4 + length]))
            at += 4 + length
        if at != len(raw):
            raise TensorError("tensor_shape_mismatch", f"input {tensor.name!r}: bytes left after {len(items)} elements")
    if len(items) != tensor.elements:
        raise TensorError("tensor_shape_mismatch", f"input {tensor.name!r}: shape {list(tensor.shape)} has "
                          f"{tensor.elements} elements; the data has {len(items)}")
    return items


# ------------------------------------------------------------------------------------------------ both ways
@dataclass(frozen=True)
class Output:
    name: str
    datatype: str
    value: np.ndarray | Sequence[bytes]  # BYTES: the elements (shape [len])
    shape: tuple[int, ...] = field(default=())  # () : the array's own shape


def _parts(tensor: Output, binary: bool) -> tuple[dict[str, Any], bytes]:
    if tensor.datatype == "BYTES":
        items = list(tensor.value)
        shape = list(tensor.shape or (len(items),))
        entry: dict[str, Any] = {"name": tensor.name, "datatype": "BYTES", "shape": shape}
        if not binary:
            return {**entry, "data": [bytes(i).decode("utf-8", "replace") for i in items]}, b""
        data = b"".join(len(i).to_bytes(4, "little") + bytes(i) for i in items)
    else:
        values = np.ascontiguousarray(tensor.value, dtype=DTYPES[tensor.datatype])
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape or values.shape)}
        if not binary:
            return {**entry, "data": values.reshape(-1).tolist()}, b""
        data = values.tobytes()
    return {**entry, "parameters": {"binary_data_size": len(data)}}, data


def encode(
    head: dict[str, Any], key: str, tensors: Sequence[Output], binary: Callable[[str], bool]
) -> tuple[bytes, int | None]:
    """``head`` with ``key`` (inputs or outputs) listing ``tensors``: (body, JSON length when binary data follows)."""
    entries, blobs = [], []
    for tensor in tensors:
        entry, blob = _parts(tensor, binary(tensor.name))
        entries.append(entry)
        blobs.append(blob)
    text = json.dumps({**head, key: entries}, separators=(",", ":")).encode()
    tail = b"".join(blobs)
    return text + tail, (len(text) if any("parameters" in e for e in entries) else None)


def encode_response(model: str, version: str, request_id: str | None, parameters: dict[str, Any],
                    outputs: Sequence[Output], binary: Callable[[str], bool]) -> tuple[bytes, int | None]:
    head: dict[str, Any] = {"model_name": model, "model_version": version, "parameters": parameters}
    if request_id is not None:
        head["id"] = request_id
    return encode(head, "outputs", outputs, binary)


def encode_request(
    inputs: Sequence[Output], parameters: dict[str, Any], binary: bool = True
) -> tuple[bytes, int | None]:
    """A client's request: ``inputs`` binary (or JSON), every output asked back binary (or JSON)."""
    return encode({"parameters": {**parameters, "binary_data_output": binary}}, "inputs", inputs, lambda _: binary)


def decode_response(body: bytes, header_length: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An answer's JSON and its outputs by name (BYTES outputs as object arrays of bytes)."""
    size = int(header_length) if header_length is not None else len(body)
    head = json.loads(body[:size])
    raw, at, outputs = memoryview(body)[size:], 0, {}
    for entry in head.get("outputs", []):
        shape, datatype = tuple(entry["shape"]), entry["datatype"]
        nbytes = (entry.get("parameters") or {}).get("binary_data_size")
        if nbytes is None:
            data = entry["data"]
            value = (np.array([d.encode() for d in data], dtype=object) if datatype == "BYTES"
                     else np.asarray(data, dtype=DTYPES[datatype]))
        else:
            tensor = Tensor(entry["name"], datatype, shape, raw[at : at + nbytes])
            value = (np.array(byte_elements(tensor), dtype=object) if datatype == "BYTES"
                     else np.frombuffer(tensor.raw or b"", DTYPES[datatype]).copy())
            at += nbytes
        outputs[entry["name"]] = value.reshape(shape)
    return head, outputs
