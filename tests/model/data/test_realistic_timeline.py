"""Long realistic videos made of scenes: the boundaries file, and each segment inside a scene shows that scene's
benchmark clip as the timeline decoder samples it; the benchmark's scoring of segments against the scenes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from loadtest.bench.timeline import per_scene, score
from model.data.fashion import FASHION_DIR, FashionConfig, draw_scene, make_clip
from model.data.realistic import REALISTIC_PRESETS, TimelineScene, read_timeline, timeline_plan, write_timeline
from model.video_segments import SegmentClip, check_segment_args, decode_segments

needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="Debian's dataset-fashion-mnist is not installed"
)


def test_scene_boundaries_are_whole_seconds_that_tile_the_video() -> None:
    spans = timeline_plan(61.0, seed=2)
    assert spans[0][0] == 0.0 and spans[-1][1] == 61.0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all(2 <= end - start <= 12 for start, end in spans[:-1]) and all(s == int(s) for s, _ in spans)
    assert timeline_plan(61.0, seed=2) == spans and timeline_plan(61.0, seed=3) != spans


@needs_fashion
def test_each_segment_inside_a_scene_shows_that_scenes_benchmark_clip(tmp_path: Path) -> None:
    preset = REALISTIC_PRESETS["720p30-10s-gop30-h264"].shortened(seconds=8.0, height=224)
    video, labels = write_timeline(tmp_path, preset)
    scenes = read_timeline(labels)
    cfg = FashionConfig()
    assert [s.label for s in scenes] == [draw_scene(cfg, "test", 2, i).label for i in range(len(scenes))]
    assert scenes[-1].end_s == 8.0

    def smooth(clip: np.ndarray) -> np.ndarray:  # 8x8 means: the noise (drawn apart) averages out, shapes stay
        return clip.astype(np.float32).reshape(16, 14, 8, 14, 8, 3).mean(axis=(2, 4))  # (16, 14, 14, 3)

    checked = 0
    for event in decode_segments(video, 16, 112, check_segment_args(2.0, None, 0.5, 100)):
        if not isinstance(event, SegmentClip):
            continue
        scene = next((s for s in scenes if s.start_s <= event.start_s and event.end_s <= s.end_s), None)
        if scene is None:
            continue  # straddles a boundary
        bench = make_clip(cfg, "test", 2, scene.index).frames
        assert np.abs(smooth(event.frames) - smooth(bench)).mean(axis=(1, 2, 3)).max() < 6.0
        checked += 1
    assert checked >= 2


def test_segments_are_scored_inside_one_scene_and_straddling_apart() -> None:
    scenes = [TimelineScene(0, 0.0, 3.0, 4), TimelineScene(1, 3.0, 8.0, 7)]
    segments = [
        {"start_s": 0.0, "end_s": 2.0, "class_id": 4}, {"start_s": 2.0, "end_s": 4.0, "class_id": 7},
        {"start_s": 4.0, "end_s": 6.0, "class_id": 7}, {"start_s": 6.0, "end_s": 8.0, "class_id": 1},
    ]
    assert score(segments, scenes) == {
        "inside": 3, "inside_accuracy": pytest.approx(2 / 3), "straddling": 1, "straddling_accuracy": 0.0,
    }


def test_scene_by_scene_the_segments_stand_next_to_the_single_clip() -> None:
    scenes = [TimelineScene(0, 0.0, 4.0, 4), TimelineScene(1, 4.0, 8.0, 7)]
    segments = [
        {"start_s": 0.0, "end_s": 2.0, "class_id": 4}, {"start_s": 2.0, "end_s": 4.0, "class_id": 1},
        {"start_s": 4.0, "end_s": 6.0, "class_id": 7}, {"start_s": 6.0, "end_s": 8.0, "class_id": 7},
    ]
    assert per_scene(segments, scenes, [True, False]) == {"scenes": 2, "segments": 0.75, "single": 0.5, "agree": 0.0}
