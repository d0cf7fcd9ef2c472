import csv
from pathlib import Path

import numpy as np
import pytest

from model.data.synth import (
    SYNTH_PRESETS,
    SynthConfig,
    class_patterns,
    make_batch,
    make_clip,
    write_dataset,
)

SMALL = SynthConfig(num_frames=4, size=32, num_classes=5, target_size=8, visible_frames=1, distractor_sizes=(3, 6))


def test_same_seed_and_index_give_the_same_clip() -> None:
    a, b = make_clip(SMALL, 3, 17), make_clip(SMALL, 3, 17)
    assert np.array_equal(a.frames, b.frames)
    assert (a.label, a.target) == (b.label, b.target)


def test_other_index_or_seed_gives_another_clip() -> None:
    base = make_clip(SMALL, 3, 17).frames
    assert not np.array_equal(base, make_clip(SMALL, 3, 18).frames)
    assert not np.array_equal(base, make_clip(SMALL, 4, 17).frames)


def test_target_stays_inside_the_video_and_the_hard_preset_meets_the_evidence_bounds() -> None:
    cfg = SYNTH_PRESETS["hard"]
    assert cfg.target_area_fraction <= 1 / 8
    assert cfg.target_time_fraction <= 1 / 4
    assert cfg.num_classes >= 10
    _, labels, targets = make_batch(SMALL, 0, list(range(64)))
    x, y, t, size, vis = targets.T
    assert (x >= 0).all() and (x + size <= SMALL.size).all()
    assert (y >= 0).all() and (y + size <= SMALL.size).all()
    assert (t >= 0).all() and (t + vis <= SMALL.num_frames).all()
    assert set(labels.tolist()) == set(range(SMALL.num_classes))


def test_the_target_patch_shows_its_class_pattern_only_while_visible() -> None:
    clip = make_clip(SMALL, 1, 5)
    x, y, t, size, _ = clip.target
    pattern = class_patterns(SMALL.num_classes, SMALL.tile, SMALL.pattern_seed)[clip.label]
    texture = np.tile(pattern, (size // 4, size // 4)).astype(bool)
    patch = clip.frames[t, y : y + size, x : x + size].astype(int).sum(-1)  # (size, size) brightness
    assert patch[texture].min() > patch[~texture].max()


def test_every_4x4_window_of_a_class_texture_has_the_same_mean() -> None:
    patterns = class_patterns(10, 4, SMALL.pattern_seed)
    for p in patterns:
        texture = np.tile(p, (3, 3)).astype(float)
        means = {texture[i : i + 4, j : j + 4].mean() for i in range(8) for j in range(8)}
        assert means == {0.5}
    flat = {p.tobytes() for p in patterns}
    assert len(flat) == 10


def test_synth_writes_decodable_h264_files_and_labels(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    labels = write_dataset(tmp_path, SMALL, 2, seed=9)
    rows = list(csv.DictReader(labels.open()))
    assert [r["filename"] for r in rows] == ["clip_000000.mp4", "clip_000001.mp4"]
    clip = make_clip(SMALL, 9, 1)
    assert rows[1]["label"] == str(clip.label) and rows[1]["x"] == str(clip.target.x)
    assert rows[1]["class_name"] == SMALL.class_names[clip.label]
    with av.open(str(tmp_path / "clip_000001.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == clip.frames.shape
    assert np.abs(decoded.astype(int) - clip.frames.astype(int)).mean() < 8
