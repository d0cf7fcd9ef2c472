"""A timeline over the Open Inference Protocol, called by NVIDIA's ``tritonclient.http`` against a real `adafocus
serve`: its tensors equal /classify's timeline for the same file; bad parameters and inputs get /classify's codes
(those that need no decoding before any); the timeline metrics read back from /metrics with exact counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model.video import encode_video
from service.http.oip_timeline import TIMELINE_OUTPUTS
from tests.model.test_video_segments import write_pts
from tests.service.conftest import Server, ramp, serve
from tests.service.test_metrics import samples_of

CLASSES = 5  # the tiny model's


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tiny_bundle, tmp_path_factory.mktemp("oip-timeline"), max_segments=12, group_max_active=2)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """10 s at 8 fps (80 frames of 48 x 64)."""
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    return encode_video(path, ramp(80, 48, 64, seed=3), "libx264", fps=8).read_bytes()


def classify(server: Server, video: bytes, **fields: str) -> dict[str, Any]:
    """/classify's timeline answer for ``video``."""
    response = httpx.post(f"{server.url}/classify", files={"video": ("v.mp4", video)}, data=fields, timeout=120)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def video_input(*videos: bytes) -> triton.InferInput:
    tensor = triton.InferInput("video", [len(videos)], "BYTES")
    tensor.set_data_from_numpy(np.array(list(videos), dtype=object), binary_data=True)  # a file is not UTF-8
    return tensor


def texts(values: np.ndarray) -> list[str]:
    """BYTES outputs: bytes from binary data, str from JSON (tritonclient's way)."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]


def probabilities_of(top_k: list[dict[str, Any]]) -> list[float]:
    """A /classify top_k as every class's probability (the tiny model has 5 classes: top_k is all of them)."""
    assert len(top_k) == CLASSES
    return [p["probability"] for p in sorted(top_k, key=lambda p: p["class_id"])]


@pytest.mark.parametrize("binary", [True, False])
def test_a_timeline_equals_classify_s_for_the_same_file(
    client: triton.InferenceServerClient, server: Server, video: bytes, binary: bool
) -> None:
    reference = classify(server, video, segment_s="2", budget="mid")
    segments = reference["segments"]
    names = [n for n in TIMELINE_OUTPUTS if n != "segment_cubes"]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in names]
    result = client.infer("tiny", [video_input(video)], outputs=outputs, parameters={"segment_s": 2, "budget": "mid"})
    assert result.as_numpy("segment_index").tolist() == [s["index"] for s in segments] == [0, 1, 2, 3, 4]
    assert result.as_numpy("segment_start_s").tolist() == [s["start_s"] for s in segments] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert result.as_numpy("segment_end_s").tolist() == [s["end_s"] for s in segments]
    assert texts(result.as_numpy("segment_label")) == [s["label"] for s in segments]
    assert result.as_numpy("segment_class_id").tolist() == [s["class_id"] for s in segments]
    assert result.as_numpy("segment_exit_step").tolist() == [s["exit_step"] for s in segments] == [1] * 5
    assert texts(result.as_numpy("segment_exit_reason")) == [s["exit_reason"] for s in segments]
    assert result.as_numpy("segment_gmacs").tolist() == pytest.approx([s["gmacs"] for s in segments], rel=1e-6)
    assert result.as_numpy("segment_confidence").tolist() == pytest.approx(
        [s["confidence"] for s in segments], abs=1e-6)
    per_segment = result.as_numpy("segment_probabilities")
    assert per_segment.shape == (5, CLASSES) and per_segment.dtype == np.float32
    assert per_segment.tolist() == [pytest.approx(probabilities_of(s["top_k"]), abs=1e-6) for s in segments]
    # the video's: the mean over the segments, as /classify's top_k says
    assert texts(result.as_numpy("label")) == [reference["label"]]
    assert result.as_numpy("class_id").tolist() == [reference["class_id"]]
    assert result.as_numpy("probabilities").shape == (1, CLASSES)
    assert result.as_numpy("probabilities")[0].tolist() == pytest.approx(probabilities_of(reference["top_k"]),
                                                                          abs=1e-6)
    assert result.as_numpy("gmacs").tolist() == pytest.approx([reference["gmacs"]], rel=1e-6)
    assert result.as_numpy("gmacs_all_k").tolist() == pytest.approx([reference["gmacs_all_k"]], rel=1e-6)
    assert result.as_numpy("gaps").shape == (0, 2)
    parameters = result.get_response()["parameters"]
    assert {k: parameters[k] for k in ("decoded_on", "budget", "segment_s", "stride_s", "duration_s",
                                       "segments_planned", "sampling", "decode_method")} == {
        "decoded_on": "server", "budget": "mid", "segment_s": 2.0, "stride_s": 2.0, "duration_s": 10.0,
        "segments_planned": 5, "sampling": "exact", "decode_method": reference["decode_method"],
    }
    assert "ended_at_s" not in parameters and parameters["first_segment_s"] > 0


def test_stride_explain_and_every_output_by_default(
    client: triton.InferenceServerClient, server: Server, video: bytes
) -> None:
    reference = classify(server, video, segment_s="4", stride_s="2", budget="high", explain="true", sampling="fast")
    parameters = {"segment_s": "4", "stride_s": 2, "budget": "high", "explain": True, "sampling": "fast"}
    result = client.infer("tiny", [video_input(video)], parameters=parameters)  # no outputs named: all, binary
    assert [o["name"] for o in result.get_response()["outputs"]] == list(TIMELINE_OUTPUTS)
    assert result.as_numpy("segment_start_s").tolist() == [0.0, 2.0, 4.0, 6.0]
    cubes = result.as_numpy("segment_cubes")
    assert cubes.shape == (4, 3, 6)  # (S, K, t y x frames size skipped): `high` runs all K = 3 cubes
    assert cubes.tolist() == [[[c["t"], c["y"], c["x"], c["frames"], c["size"], int(c["skipped"])]
                               for c in s["cubes"]] for s in reference["segments"]]
    assert result.get_response()["parameters"]["sampling"] == "fast"


def test_gaps_and_an_early_end_are_in_the_answer(
    client: triton.InferenceServerClient, server: Server, tmp_path: Path
) -> None:
    gap = write_pts(tmp_path / "gap.mp4", list(range(16)) + list(range(40, 56))).read_bytes()
    result = client.infer("tiny", [video_input(gap)], parameters={"segment_s": 1})
    assert result.as_numpy("gaps").tolist() == [[2.0, 5.0]]
    assert result.as_numpy("segment_index").tolist() == [0, 1, 5, 6]  # 2, 3 and 4 fall in the gap
    whole = encode_video(tmp_path / "v.mkv", ramp(80, 48, 64, seed=3), "libx264", fps=8).read_bytes()
    cut = whole[: len(whole) // 2]
    reference = classify(server, cut, segment_s="1")
    result = client.infer("tiny", [video_input(cut)], parameters={"segment_s": 1})
    parameters = result.get_response()["parameters"]
    assert result.as_numpy("segment_index").tolist() == [s["index"] for s in reference["segments"]]
    assert 0 < len(reference["segments"]) < 10
    assert (parameters["ended_at_s"], parameters["end_reason"]) == (reference["ended_at_s"], reference["end_reason"])


def refused(client: triton.InferenceServerClient, inputs: list[triton.InferInput], **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as raised:
        client.infer("tiny", inputs, **kwargs)
    status, message = raised.value.status(), raised.value.message()
    return str(status), message


@pytest.mark.parametrize(
    ("parameters", "code"),
    [({"segment_s": 0}, "bad_segment"), ({"segment_s": -2}, "bad_segment"), ({"segment_s": "NaN"}, "bad_segment"),
     ({"segment_s": "two"}, "bad_segment"), ({"segment_s": True}, "bad_segment"), ({"stride_s": 1}, "bad_segment"),
     ({"segment_s": 0.2}, "segment_too_short"), ({"segment_s": 2, "stride_s": 0.1}, "segment_too_short"),
     ({"segment_s": 2, "sampling": "best"}, "invalid_parameter")],
)
def test_bad_parameters_are_refused_before_decoding(
    client: triton.InferenceServerClient, parameters: dict[str, Any], code: str
) -> None:
    # not a video at all: each of these is answered before the decoder would have said `not_a_video`
    status, message = refused(client, [video_input(b"not a video")], parameters=parameters)
    assert (status, message.split(":")[0]) == ("422", code)


def test_limits_that_need_the_videos_length(client: triton.InferenceServerClient, video: bytes) -> None:
    status, message = refused(client, [video_input(video)], parameters={"segment_s": 11})
    assert (status, message.split(":")[0]) == ("422", "segment_too_long")
    status, message = refused(client, [video_input(video)], parameters={"segment_s": 0.5})
    assert (status, message.split(":")[0]) == ("422", "too_many_segments")
    assert "ADAFOCUS_MAX_SEGMENTS" in message and "is 12" in message


def test_one_video_per_timeline_and_only_timeline_outputs(
    client: triton.InferenceServerClient, video: bytes
) -> None:
    status, message = refused(client, [video_input(video, video)], parameters={"segment_s": 2})
    assert (status, message.split(":")[0]) == ("400", "invalid_inference_request")
    assert "one video per request" in message
    frames = triton.InferInput("frames", [1, 4, 32, 32, 3], "UINT8")
    frames.set_data_from_numpy(np.zeros((1, 4, 32, 32, 3), np.uint8))
    status, message = refused(client, [frames], parameters={"segment_s": 2})
    assert (status, message.split(":")[0]) == ("400", "invalid_inference_request") and "`video` input" in message
    outputs = [triton.InferRequestedOutput("exit_step")]  # a single clip's: the segments have segment_exit_step
    status, message = refused(client, [video_input(video)], outputs=outputs, parameters={"segment_s": 2})
    assert (status, message.split(":")[0]) == ("400", "invalid_inference_request") and "'exit_step'" in message


def test_metadata_lists_the_timeline_outputs(client: triton.InferenceServerClient) -> None:
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in client.get_model_metadata("tiny")["outputs"]}
    assert set(TIMELINE_OUTPUTS) <= set(outputs)
    assert outputs["segment_probabilities"] == ("FP32", [-1, CLASSES])
    assert outputs["segment_cubes"] == ("INT32", [-1, 3, 6]) and outputs["gaps"] == ("FP32", [-1, 2])


def test_metrics_count_timelines_by_outcome_and_their_segments(
    client: triton.InferenceServerClient, server: Server, video: bytes
) -> None:
    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples_of(httpx.get(f"{server.url}/metrics").text)

    before = scrape()
    client.infer("tiny", [video_input(video)], parameters={"segment_s": 2.5})  # 4 segments
    classify(server, video, segment_s="2")  # /classify's: 5 segments
    refused(client, [video_input(video)], parameters={"segment_s": 0})
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("adafocus_timeline_requests_total", outcome="complete") == 2
    assert delta("adafocus_timeline_requests_total", outcome="invalid") == 1
    assert delta("adafocus_timeline_requests_total", outcome="partial") == 0
    assert delta("adafocus_timeline_segments_total") == 9
    assert (delta("adafocus_timeline_segments_per_video_count"), delta("adafocus_timeline_segments_per_video_sum")) \
        == (2, 9)
    assert delta("adafocus_timeline_segments_per_video_bucket", le="2.0") == 0
    assert delta("adafocus_timeline_segments_per_video_bucket", le="5.0") == 2
    assert delta("adafocus_timeline_first_segment_seconds_count") == 2
