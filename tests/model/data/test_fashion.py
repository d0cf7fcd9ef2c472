import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from model.data.datasets import PRESETS
from model.data.fashion import (
    FASHION_DIR,
    KINDS,
    FashionConfig,
    MissingDataset,
    draw_difficulty,
    load_split_images,
    make_clip,
    read_idx,
    write_dataset,
)

TINY = PRESETS["fashion:tiny"]
assert isinstance(TINY, FashionConfig)
needs_data = pytest.mark.skipif(
    not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="Debian's dataset-fashion-mnist is not installed"
)


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def test_idx_reader_reads_plain_and_gzipped_files(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(idx_bytes(images, 0x08))
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images, 0x08)))
    labels = np.array([7, 1, 3], dtype=">i4")
    (tmp_path / "l-idx1-ubyte").write_bytes(idx_bytes(labels, 0x0C))
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), images)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), images)
    assert read_idx(tmp_path / "l-idx1-ubyte").tolist() == [7, 1, 3]


def test_idx_reader_refuses_bad_magic_and_truncated_data(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x01\x05")
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros(4, np.uint8), 0x08)[:-1])
    for name in ("bad", "short"):
        with pytest.raises(ValueError):
            read_idx(tmp_path / name)


def test_a_missing_dataset_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(MissingDataset, match="apt-get install dataset-fashion-mnist"):
        load_split_images("test", str(tmp_path))


def test_difficulty_stays_within_the_config_bounds() -> None:
    cfg = FashionConfig()
    rng = np.random.default_rng(0)
    draws = [draw_difficulty(cfg, rng) for _ in range(2000)]
    kinds = [d.kind for d in draws]
    for kind, share in zip(KINDS, cfg.kind_shares, strict=True):
        assert abs(kinds.count(kind) / len(draws) - share) < 0.05
    for d in draws:
        lo, hi = {"clear": cfg.clear_sizes, "small": cfg.small_sizes, "degraded": cfg.degraded_sizes}[d.kind]
        assert lo <= d.size <= hi
        assert d.visible_from >= 0 and d.visible_from + d.visible_frames <= cfg.num_frames
        if d.kind == "degraded":
            assert cfg.occlusion[0] <= d.occlusion <= cfg.occlusion[1]
            assert cfg.degraded_noise[0] <= d.noise <= cfg.degraded_noise[1]
            assert cfg.degraded_blur[0] <= d.blur <= cfg.degraded_blur[1]
            assert cfg.degraded_visible[0] <= d.visible_frames <= cfg.degraded_visible[1]
        else:
            assert (d.occlusion, d.noise, d.blur, d.visible_frames) == (0.0, 0.0, 0.0, cfg.num_frames)


def test_config_refuses_bounds_outside_the_frame() -> None:
    with pytest.raises(ValueError, match="clear_sizes"):
        FashionConfig(clear_sizes=(40, 200))
    with pytest.raises(ValueError, match="degraded_visible"):
        FashionConfig(degraded_visible=(4, 40))


@needs_data
def test_same_split_seed_and_index_give_the_same_clip_and_others_differ() -> None:
    a, b = make_clip(TINY, "test", 3, 17), make_clip(TINY, "test", 3, 17)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.boxes, b.boxes)
    assert (a.label, a.difficulty, a.image_index) == (b.label, b.difficulty, b.image_index)
    for other in (make_clip(TINY, "test", 3, 18), make_clip(TINY, "test", 4, 17), make_clip(TINY, "train", 3, 17)):
        assert not np.array_equal(a.frames, other.frames)


@needs_data
def test_clips_keep_the_product_inside_the_frame_and_its_label() -> None:
    images, labels = load_split_images("calibration")
    assert len(images) == 6000 and images.dtype == np.float32 and 0 <= images.min() < images.max() <= 1
    for index in range(40):
        clip = make_clip(TINY, "calibration", 0, index)
        assert clip.frames.shape == (4, 32, 32, 3) and clip.frames.dtype == np.uint8
        assert clip.label == labels[clip.image_index]
        x, y, size, visible = clip.boxes.T
        assert (x >= 0).all() and (x + size <= 32).all() and (y >= 0).all() and (y + size <= 32).all()
        assert (size == clip.difficulty.size).all()
        d = clip.difficulty
        assert visible.tolist() == [int(d.visible_from <= t < d.visible_from + d.visible_frames) for t in range(4)]


@needs_data
def test_synth_command_writes_fashion_clips_and_labels(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    labels = write_dataset(tmp_path, TINY, 2, "test", seed=9)
    rows = list(csv.DictReader(labels.open()))
    clip = make_clip(TINY, "test", 9, 1)
    assert [r["filename"] for r in rows] == ["clip_000000.mp4", "clip_000001.mp4"]
    assert rows[1]["label"] == str(clip.label) and rows[1]["kind"] == clip.difficulty.kind
    assert json.loads(rows[1]["boxes"]) == clip.boxes.tolist()
    with av.open(str(tmp_path / "clip_000001.mp4")) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == clip.frames.shape
