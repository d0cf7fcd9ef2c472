"""The one error of tensor inputs (Open Inference Protocol bodies and the clips they carry), with a stable code.

Raised by the wire format (service/http/oip_tensors.py) and by the frames path (service/classify/frames.py);
service/http/errors.py maps each code to its status (``TENSOR_STATUS``).
"""

from __future__ import annotations

from typing import Literal

TensorCode = Literal[
    "invalid_inference_request",  # 400: not an inference request (JSON shape, header length, binary sizes; a
    # timeline (segment_s) of N > 1 videos or of frames; outputs the request cannot have)
    "tensor_datatype",  # 422: an input of the wrong datatype
    "tensor_shape",  # 422: a shape the input does not take ([N, T, H, W, 3], [N])
    "tensor_shape_mismatch",  # 422: the declared shape disagrees with the data
    "tensor_too_large",  # 413: more elements than a tensor may have, or a JSON header over its cap
    "too_few_frames",  # 422: frames with T below the model's T
    "too_many_clips",  # 422: N above what the admission queue can hold
    "invalid_parameter",  # 422: a bad request parameter (budget, deadline_ms, explain, sampling)
]

TENSOR_STATUS: dict[str, int] = {
    "invalid_inference_request": 400, "tensor_datatype": 422, "tensor_shape": 422, "tensor_shape_mismatch": 422,
    "tensor_too_large": 413, "too_few_frames": 422, "too_many_clips": 422, "invalid_parameter": 422,
}


class TensorError(Exception):
    """A tensor body or tensor input that cannot be used; ``code`` is stable, ``message`` for humans."""

    def __init__(self, code: TensorCode, message: str) -> None:
        super().__init__(message)
        self.code: TensorCode = code
        self.message = message
