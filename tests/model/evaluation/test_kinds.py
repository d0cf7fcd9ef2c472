import math

import numpy as np
import pytest
import torch

from model.adafocus import AdaFocusV3
from model.config import get_config
from model.data.datasets import PRESETS, build_dataset, generated_spec
from model.data.fashion import FASHION_DIR, FashionConfig, draw_scene, make_clip
from model.data.scene_facts import distractor_boxes, stream_facts
from model.data.targets import cube_hits
from model.evaluation.collect import collect
from model.evaluation.kinds import box_centres, cube_iou, kind_report, record_kinds, render_kinds
from model.testing import spread_exit_model

TINY = PRESETS["fashion:tiny"]
assert isinstance(TINY, FashionConfig)
needs_data = pytest.mark.skipif(
    not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="Debian's dataset-fashion-mnist is not installed"
)


def boxes_of(rows: list[tuple[int, int, int, int]], frames: int = 4) -> np.ndarray:
    return np.array([rows * frames], dtype=np.int64).reshape(1, frames, 4)


def test_cube_iou_is_the_overlap_over_the_union_in_the_cubes_frame() -> None:
    boxes = boxes_of([(4, 4, 8, 1)])  # an 8 px product at (4, 4), visible on every frame
    starts = np.array([[[0, 0, 0], [4, 4, 1], [20, 20, 2]]])  # (1, 3, 3) cubes of 8 x 8
    iou = cube_iou(starts, (1, 8, 8), boxes)
    assert iou.tolist() == [[16 / 112, 1.0, 0.0]]
    boxes[0, 1, 3] = 0  # not visible on frame 1: no IoU there
    assert cube_iou(starts, (1, 8, 8), boxes)[0, 1] == 0.0


def test_box_centres_put_the_cube_on_the_product_and_fall_back_where_it_is_hidden() -> None:
    model = AdaFocusV3(get_config("tiny"))  # 4 frames of 32 px, cubes 8 x 8 x 1
    boxes = torch.tensor([[[10, 6, 8, 1], [10, 6, 8, 1], [0, 0, 8, 0], [0, 0, 8, 0]]])  # (1, T, 4)
    fallback = torch.tensor([[0.5, 0.5, 0.5]])
    on = box_centres(model, boxes, torch.tensor([1]), fallback)
    assert model.cube_starts(on).tolist() == [[10, 6, 1]]
    assert torch.equal(box_centres(model, boxes, torch.tensor([2]), fallback), fallback)


def test_kind_report_counts_hits_misses_and_distractors_exactly() -> None:
    targets = np.concatenate([boxes_of([(0, 0, 8, 1)]), boxes_of([(20, 20, 8, 1)])])  # (2, T, 4)
    record = {
        "labels": np.array([1, 2]),
        "targets": targets,
        "pred": np.array([[0, 1, 1], [0, 0, 2]]),  # exits 0, 1, K=2
        "oracle": np.array([[0, 1, 1], [0, 2, 2]]),
        "starts": np.array([[[0, 0, 0], [20, 20, 1]], [[0, 0, 0], [20, 20, 1]]]),  # clip 0 hits with cube 1 only
        "local": np.array([[1, 3], [3, 2]]),
        "centred": np.array([1, 0]),
        "glance_aux": np.array([1, 1]),
    }
    distractors = np.full((2, 1, 4, 4), -1, dtype=np.int64)
    distractors[1, 0] = (0, 0, 8, 1)  # clip 1's first cube sits on a distractor
    report = kind_report(record, np.array(["small", "clear"]), (1, 8, 8), distractors)
    small, clear = report["small"], report["clear"]
    assert small["accuracy"] == {"glance": 0.0, "1_cube": 1.0, "k_cubes": 1.0}
    assert (small["cube1_hit_rate"], small["any_hit_rate"], small["cube1_iou"]) == (1.0, 1.0, 1.0)
    assert (small["local_acc_on_hits"], small["local_acc_on_misses"], small["misses_on_distractor"]) == (1.0, 0.0, 0.0)
    assert (clear["cube1_hit_rate"], clear["any_hit_rate"], clear["misses_on_distractor"]) == (0.0, 1.0, 1.0)
    assert clear["local_acc_on_distractors"] == 0.0 and clear["local_acc_on_hits"] == 1.0
    assert clear["oracle_accuracy"] == {"1_cube": 1.0, "k_cubes": 1.0} and clear["local_acc_box_centred"] == 0.0
    assert (small["glance_aux_acc"], clear["glance_aux_acc"]) == (1.0, 0.0)
    assert report["all"]["clips"] == 2 and report["all"]["accuracy"]["1_cube"] == 0.5
    table = render_kinds(report)
    assert table.splitlines()[3].startswith("| `clear` | 1 | 0.0 | 0.0 | 100.0 | 100.0 | 100.0 | 0.0 | 100.0 |")


@needs_data
def test_the_facts_are_the_generators_own() -> None:
    kinds, boxes = stream_facts(TINY, "test", 3, 6)
    for i in range(6):
        scene = draw_scene(TINY, "test", 3, i)
        assert kinds[i] == make_clip(TINY, "test", 3, i).difficulty.kind
        n = len(scene.distractors)
        assert (boxes[i, :n, :, 2] == [[d.side] for d in scene.distractors]).all()
        assert (boxes[i, n:] == -1).all()
        assert (boxes[i, :n, :, :2] >= 0).all() and (boxes[i, :n, :, 0] + boxes[i, :n, :, 2] <= TINY.size).all()
    assert distractor_boxes(TINY, "test", 3, 0, 1).shape == (1, TINY.num_frames, 4)


@needs_data
def test_record_kinds_follows_the_served_path_and_the_oracle_sits_on_the_product() -> None:
    model = spread_exit_model(get_config("tiny").replace(num_classes=10))
    dataset = build_dataset(generated_spec("fashion:tiny", "test", 4, 12), 4, 32)
    rec = record_kinds(model, dataset, batch_size=5)
    served = collect(model, dataset, "policy", batch_size=5)
    assert np.array_equal(rec["pred"], served.logits.argmax(-1))
    assert np.array_equal(rec["starts"], served.starts)
    # the oracle keeps each cube's frame and moves it onto the product there: every visible frame is a hit
    frames = torch.from_numpy(rec["starts"][:, 0, 2])
    centres = box_centres(model, torch.from_numpy(rec["targets"]), frames, torch.zeros(12, 3))
    starts = model.cube_starts(centres).numpy()[:, None]  # (N, 1, 3)
    visible = rec["targets"][np.arange(12), rec["starts"][:, 0, 2], 3] > 0
    assert np.array_equal(cube_hits(starts, model.cube_shape, rec["targets"])[:, 0], visible)
    assert math.isfinite(float(rec["centred"].mean()))


@needs_data
def test_the_diagnose_command_prints_one_row_per_kind(tmp_path, capsys) -> None:
    from model.bundle import save_bundle
    from model.testing import fixed_budgets
    from service.cli import main

    model = spread_exit_model(get_config("tiny").replace(num_classes=10))
    save_bundle(tmp_path / "b", model, fixed_budgets(model), "# tiny\n", benchmark="fashion:tiny")
    assert main(["diagnose", "--bundle", str(tmp_path / "b"), "--seed", "3", "--count", "12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "`fashion:tiny` test stream seed 3, 12 clips"
    kinds = sorted(set(stream_facts(TINY, "test", 3, 12)[0].tolist()))
    assert [line.split(" | ")[0] for line in lines[3:]] == ["| `all`"] + [f"| `{k}`" for k in kinds]
    save_bundle(tmp_path / "s", model, fixed_budgets(model), "# tiny\n", benchmark="synth:easy")
    assert main(["diagnose", "--bundle", str(tmp_path / "s"), "--seed", "3"]) == 2
