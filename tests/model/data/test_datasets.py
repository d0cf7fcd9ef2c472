from pathlib import Path

import numpy as np
import torch

from model.data.datasets import DataSpec, SynthDataset, VideoFolderDataset, batch_plan, build_dataset, iterate
from model.data.synth import SynthConfig, make_clip, write_mp4
from model.data.targets import no_boxes, static_boxes

SMALL = SynthConfig(num_frames=4, size=32, num_classes=5, target_size=8, visible_frames=1, distractor_sizes=(3, 6))


def test_synth_dataset_items_are_channel_first_clips_with_their_target() -> None:
    frames, label, target = SynthDataset(SMALL, 1, 8)[3]
    clip = make_clip(SMALL, 1, 3)
    assert frames.shape == (3, 4, 32, 32) and frames.dtype == torch.uint8
    assert torch.equal(frames.permute(1, 2, 3, 0), torch.from_numpy(clip.frames))
    assert label == clip.label
    box = clip.target
    assert target.tolist() == static_boxes(box.x, box.y, box.size, box.t, box.frames, 4).tolist()


def test_batch_plan_is_resumable_at_any_step() -> None:
    for infinite in (True, False):
        full = batch_plan(10, 4, 0, 7, seed=3, infinite=infinite)
        assert batch_plan(10, 4, 4, 3, seed=3, infinite=infinite) == full[4:]
    assert batch_plan(10, 4, 0, 2, seed=3, infinite=True) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    epoch0 = batch_plan(10, 4, 0, 2, seed=3, infinite=False)
    assert len(set(epoch0[0]) | set(epoch0[1])) == 8  # one epoch never repeats an item


def test_iterate_yields_batches_in_plan_order() -> None:
    data = build_dataset(DataSpec("synth", 2, 6, SMALL), 4, 32)
    ((frames, labels, targets),) = list(iterate(data, [[5, 0]], workers=0))
    assert frames.shape == (2, 3, 4, 32, 32)
    assert labels.tolist() == [make_clip(SMALL, 2, 5).label, make_clip(SMALL, 2, 0).label]
    assert targets.shape == (2, 4, 4)


def test_video_folder_dataset_decodes_class_folders(tmp_path: Path) -> None:
    for name, index in (("cats", 0), ("dogs", 1)):
        (tmp_path / name).mkdir()
        write_mp4(tmp_path / name / f"v{index}.mp4", make_clip(SMALL, 0, index).frames)
    (tmp_path / "dogs" / "notes.txt").write_text("not a video")
    data = VideoFolderDataset(tmp_path, num_frames=4, size=32)
    assert data.class_names == ("cats", "dogs")
    assert len(data) == 2
    frames, label, target = data[1]
    assert frames.shape == (3, 4, 32, 32) and frames.dtype == torch.uint8
    assert label == 1
    assert target.tolist() == no_boxes(4).tolist()
    original = make_clip(SMALL, 0, 1).frames.astype(int)
    assert (
        np.abs(frames.permute(1, 2, 3, 0).numpy().astype(int) - original).mean() < 12
    )  # yuv420p chroma subsampling of pixel noise
