"""The realistic upload corpus: the benchmark's scenes at real sizes, rates and codecs; the decoder on every preset."""

from __future__ import annotations

import csv
import hashlib
import itertools
from pathlib import Path

import av
import numpy as np
import pytest

from loadtest.bench.decode import RealisticBenchConfig, realistic_markdown, run_realistic_bench
from model.data.datasets import PRESETS
from model.data.fashion import FASHION_DIR, LABELS_HEADER, FashionConfig, draw_scene, label_row, make_clip
from model.data.realistic import REALISTIC_PRESETS, RealisticPreset, parse_presets, write_realistic
from model.video import DecodeLimits, plan_clip, sample_clip

pytestmark = pytest.mark.skipif(
    not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="Debian's dataset-fashion-mnist is not installed"
)
# sha256 over clips 0..11 of (train, 2) and (test, 2): frames, boxes, difficulty, label and image index, as the
# benchmark drew them before its drawing was split into a scene and its rendering
BENCHMARK_SHA256 = {
    "fashion": "0e5e589574a84e3c3d344423d1469c190e4afb11937e775cccc645d19aeddfa2",
    "fashion:tiny": "1134cc8955bd8acd0cb0a2dd89a911926651dd704d8dcd69da9b656c2d229c9c",
}
SHORT = {name: preset.shortened(seconds=3.0, height=96) for name, preset in REALISTIC_PRESETS.items()}


@pytest.mark.parametrize("name", sorted(BENCHMARK_SHA256))
def test_the_benchmark_clips_are_byte_identical_to_before(name: str) -> None:
    cfg = PRESETS[name]
    assert isinstance(cfg, FashionConfig)
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for index in range(12):
            clip = make_clip(cfg, split, 2, index)
            digest.update(clip.frames.tobytes())
            digest.update(clip.boxes.tobytes())
            digest.update(repr(tuple(clip.difficulty)).encode())
            digest.update(str((clip.label, clip.image_index)).encode())
    assert digest.hexdigest() == BENCHMARK_SHA256[name]


def test_the_presets_cover_sizes_rates_lengths_gops_codecs_rotation_and_ten_minutes() -> None:
    presets = list(REALISTIC_PRESETS.values())
    assert {min(p.width, p.height) for p in presets} == {480, 720, 1080}
    assert {p.fps for p in presets} == {24, 30, 60}
    assert {5, 10, 30, 600} <= {p.seconds for p in presets}
    assert {30, 60, 250} <= {p.gop for p in presets}
    assert {p.bframes for p in presets if p.codec == "h264"} == {True, False}
    assert {p.codec for p in presets} == {"h264", "hevc", "vp9", "av1"}
    assert [p.name for p in presets if p.rotation] == ["720p30-10s-gop30-h264-rot90"]
    assert [p.name for p in presets if p.seconds == 600] == ["720p30-600s-gop60-h264"]
    assert parse_presets("all") == tuple(presets)
    with pytest.raises(ValueError, match="unknown realistic preset"):
        parse_presets("720p30-10s-gop30-h264,4k")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every preset, 3 s long and 96 pixels on the shorter side (codec, rate, GOP, B-frames, rotation as shipped)."""
    root = tmp_path_factory.mktemp("realistic")
    write_realistic(root, list(SHORT.values()), count=1)
    return root


def clip_path(root: Path, preset: RealisticPreset) -> Path:
    return root / preset.name / f"clip_000000.{preset.suffix}"


def stream_facts(path: Path) -> tuple[str, float, list[int], bool, int, tuple[int, int]]:
    """(codec, frame rate, keyframes' display positions, a frame shown before one decoded earlier, rotation,
    stored size)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
        container.seek(0, stream=stream)
        frame = next(container.decode(stream))
        reordered = any(b[0] < a[0] for a, b in itertools.pairwise(packets))  # type: ignore[operator]
        shown = sorted(pts for pts, _ in packets)  # type: ignore[type-var]
        keys = sorted(shown.index(pts) for pts, key in packets if key)  # display positions of the keyframes
        rate = float(stream.average_rate or 0)
        return stream.codec_context.name, rate, keys, reordered, frame.rotation, (frame.width, frame.height)


@pytest.mark.parametrize("name", sorted(SHORT))
def test_each_preset_is_encoded_as_it_says_with_the_benchmarks_labels(corpus: Path, name: str) -> None:
    preset = SHORT[name]
    codec, rate, keys, reordered, rotation, stored = stream_facts(clip_path(corpus, preset))
    assert codec == {"av1": "libdav1d"}.get(preset.codec, preset.codec) and rate == pytest.approx(preset.fps)
    assert keys == list(range(0, preset.frames, preset.gop))  # a fixed interval: no keyframe at scene cuts
    assert reordered == (preset.bframes and preset.codec in ("h264", "hevc"))
    assert rotation == preset.rotation
    assert stored == ((preset.height, preset.width) if preset.rotation else (preset.width, preset.height))
    with (corpus / preset.name / "labels.csv").open() as fh:
        rows = list(csv.reader(fh))
    scene = draw_scene(FashionConfig(), "test", 2, 0)
    clip = make_clip(FashionConfig(), "test", 2, 0)
    expected = label_row(clip.label, clip.difficulty, clip.image_index, clip.boxes)
    assert rows == [list(LABELS_HEADER), [clip_path(corpus, preset).name, *map(str, expected)]]
    assert scene.label == clip.label


@pytest.mark.parametrize("name", sorted(SHORT))
def test_exact_sampling_returns_the_old_decoders_bytes_on_every_preset(corpus: Path, name: str) -> None:
    path = clip_path(corpus, SHORT[name])
    old = sample_clip(path, 16, 32, DecodeLimits(sampling="legacy"))
    new = sample_clip(path, 16, 32)
    fast = sample_clip(path, 16, 32, DecodeLimits(sampling="fast"))
    np.testing.assert_array_equal(new.frames, old.frames)
    with av.open(str(path)) as container:
        plan = plan_clip(container, container.streams.video[0], 16, DecodeLimits())
    assert new.frames_decoded <= plan.decode_cost <= old.frames_decoded
    assert (fast.sampling, fast.frames.shape) == ("fast", (16, 32, 32, 3))
    assert 0.0 <= fast.max_offset_s <= 0.5 and fast.frames_decoded <= new.frames_decoded


def test_the_frames_the_decoder_samples_show_the_benchmarks_scene(tmp_path: Path) -> None:
    preset = REALISTIC_PRESETS["720p30-10s-gop30-h264"].shortened(seconds=2.0, height=224)
    write_realistic(tmp_path, [preset], count=1)
    decoded = sample_clip(clip_path(tmp_path, preset), 16, 112).frames.astype(np.float32)  # (16, 112, 112, 3)
    bench = make_clip(FashionConfig(), "test", 2, 0).frames.astype(np.float32)

    def smooth(video: np.ndarray) -> np.ndarray:  # 8x8 means: the noise (drawn apart) averages out, shapes stay
        return video.reshape(16, 14, 8, 14, 8, 3).mean(axis=(2, 4))  # (16, 14, 14, 3)

    error = np.abs(smooth(decoded) - smooth(bench)).mean(axis=(1, 2, 3))  # (16,) per sampled frame
    shifted = np.abs(smooth(np.roll(decoded, 8, axis=2)) - smooth(bench)).mean()  # the scene 8 pixels aside
    assert error.max() < 6.0 and shifted > 1.5 * error.mean()


def test_the_decode_benchmark_puts_the_three_decoders_side_by_side(corpus: Path) -> None:
    presets = (SHORT["720p30-10s-gop30-h264"], SHORT["720p30-10s-gop250-h264"])
    cfg = RealisticBenchConfig(presets, clips=1, repeats=2, num_frames=8, size=32, corpus=corpus, rss=False)
    result = run_realistic_bench(cfg)
    assert [row["preset"] for row in result["presets"]] == [p.name for p in presets]
    for row in result["presets"]:
        frames = row["frames"]
        assert row["identical"] and frames["exact"] == row["minimum_frames"]  # H.264: the plan's count is exact
        assert frames["legacy"] > frames["exact"] >= frames["fast"]
        assert len(row["exact_vs_legacy"]["repeats"]) == 2 and row["fast_max_offset_s"] <= 0.5
    table = realistic_markdown(result).splitlines()
    assert len(table) == 2 + len(presets) and table[2].startswith(f"| {presets[0].name} |")
