"""A timeline over the Open Inference Protocol: ``POST /v2/models/{name}/infer`` with the parameter ``segment_s``.

The input is one encoded file (``video`` BYTES ``[1]``; a request with N > 1 files, or with ``frames``, is a 400
``invalid_inference_request``: frames carry no presentation times, and each video is its own request). The
parameters ``segment_s`` and ``stride_s`` (numbers, or text that is one) follow /classify's one rule
(``service.classify.timeline.segment_spec``): the same limits and codes (``bad_segment``, ``segment_too_short``,
``segment_too_long``, ``too_many_segments``), each a 422 before any decoding. The answer is /classify's timeline in
tensors (``TIMELINE_OUTPUTS``): the video's ``label``, ``class_id``, ``probabilities`` ``[1, C]`` (the mean over
its segments), ``gmacs`` and ``gmacs_all_k`` ``[1]``; per segment answered, in time order, ``segment_*`` ``[S]``
(``segment_probabilities`` ``[S, C]``, ``segment_cubes`` ``[S, K, 6]`` with ``explain``); ``gaps`` ``[G, 2]``
(start, end in seconds); the timeline's scalars (duration, segments planned, where it ended) in the answer's
``parameters``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.video_segments import SegmentError, SegmentSpec
from service.classify.frames import TimelineAnswer
from service.classify.tensor_errors import TensorError
from service.classify.timeline import record_outcome, segment_spec, video_probabilities
from service.http import oip_tensors as wire
from service.http.open_inference import CUBE_FIELDS, timeline_shapes
from service.lifecycle import ServiceState
from service.schemas import TimelineResponse

VIDEO_OUTPUTS = ("label", "class_id", "probabilities", "gmacs")  # as a single clip's, for the whole video
# the outputs only a timeline has, as the model's metadata lists them
TIMELINE_OUTPUTS = VIDEO_OUTPUTS + tuple(name for name, _, _ in timeline_shapes(1, 1))
TIMELINE_PARAMETERS = frozenset({"segment_s", "stride_s"})


def wants_timeline(parameters: dict[str, Any]) -> bool:
    return not TIMELINE_PARAMETERS.isdisjoint(parameters)


def timeline_spec(state: ServiceState, parameters: dict[str, Any], inputs: list[wire.Tensor]) -> SegmentSpec:
    """The request's segments (its parameters first, then its one input); a refusal counts as ``invalid``."""
    try:
        spec = segment_spec(state, parameters.get("segment_s"), parameters.get("stride_s"))
        names = [t.name for t in inputs]
        if names != ["video"]:
            raise TensorError("invalid_inference_request", f"segment_s takes the `video` input (an encoded file: its "
                              f"segments follow its presentation times); got {sorted(names)}")
        if list(inputs[0].shape) != [1]:
            raise TensorError("invalid_inference_request", f"segment_s takes one video per request (`video` of shape "
                              f"[1]), got {list(inputs[0].shape)}: send each video as its own request")
    except (SegmentError, TensorError):
        record_outcome(state, "invalid")
        raise
    return spec


def timeline_outputs(state: ServiceState, timeline: TimelineAnswer, explain: bool) -> list[wire.Output]:
    """Every output tensor of a timeline answer (the route keeps those the request names)."""
    assert state.bundle is not None
    cfg, body = state.bundle.config, timeline.body
    segments, count = body.segments, len(body.segments)
    video = np.array(video_probabilities(timeline.probabilities, cfg.num_classes), np.float32)  # (C,): the mean
    outputs = [
        wire.Output("label", "BYTES", [body.label.encode()]),
        wire.Output("class_id", "INT64", np.array([body.class_id], np.int64)),  # (1,)
        wire.Output("probabilities", "FP32", video.reshape(1, cfg.num_classes)),  # (1, C)
        wire.Output("gmacs", "FP32", np.array([body.gmacs], np.float32)),  # (1,)
        wire.Output("gmacs_all_k", "FP32", np.array([body.gmacs_all_k], np.float32)),  # (1,)
        wire.Output("segment_index", "INT32", np.array([s.index for s in segments], np.int32)),  # (S,)
        wire.Output("segment_start_s", "FP32", np.array([s.start_s for s in segments], np.float32)),  # (S,)
        wire.Output("segment_end_s", "FP32", np.array([s.end_s for s in segments], np.float32)),  # (S,)
        wire.Output("segment_label", "BYTES", [s.label.encode() for s in segments]),
        wire.Output("segment_class_id", "INT64", np.array([s.class_id for s in segments], np.int64)),  # (S,)
        wire.Output("segment_confidence", "FP32", np.array([s.confidence for s in segments], np.float32)),  # (S,)
        wire.Output("segment_probabilities", "FP32",
                    np.array(timeline.probabilities, np.float32).reshape(count, cfg.num_classes)),  # (S, C)
        wire.Output("segment_exit_step", "INT32", np.array([s.exit_step for s in segments], np.int32)),  # (S,)
        wire.Output("segment_exit_reason", "BYTES", [s.exit_reason.encode() for s in segments]),
        wire.Output("segment_gmacs", "FP32", np.array([s.gmacs for s in segments], np.float32)),  # (S,)
    ]
    if explain:
        cubes = np.full((count, cfg.num_cubes, CUBE_FIELDS), -1, np.int32)  # (S, K, 6)
        for n, segment in enumerate(segments):
            for k, c in enumerate(segment.cubes or []):
                cubes[n, k] = (c.t, c.y, c.x, c.frames, c.size, int(c.skipped))
        outputs.append(wire.Output("segment_cubes", "INT32", cubes))
    gaps = np.array([(g.start_s, g.end_s) for g in body.gaps], np.float32).reshape(-1, 2)  # (G, 2)
    return [*outputs, wire.Output("gaps", "FP32", gaps)]


def timeline_parameters(body: TimelineResponse) -> dict[str, Any]:
    """The timeline's scalars for the answer's ``parameters`` (OIP parameters are booleans, numbers or text)."""
    parameters: dict[str, Any] = {
        "segment_s": body.segment_s, "stride_s": body.stride_s, "duration_s": body.duration_s,
        "segments_planned": body.segments_planned, "sampling": body.sampling, "decode_method": body.decode_method,
        "frames_decoded": body.frames_decoded,
    }
    optional = {"first_segment_s": body.first_segment_s, "ended_at_s": body.ended_at_s, "end_reason": body.end_reason}
    return {**parameters, **{k: v for k, v in optional.items() if v is not None}}
