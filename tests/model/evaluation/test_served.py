from pathlib import Path

import numpy as np
import pytest

from model.config import get_config
from model.data.datasets import PRESETS, FashionDataset
from model.data.fashion import FASHION_DIR, FashionConfig
from model.evaluation.card import results_section
from model.evaluation.served import WrittenClips, served_report, served_section
from model.testing import spread_exit_model
from tests.model.evaluation.test_card import report as card_report

TINY = PRESETS["fashion:tiny"]
assert isinstance(TINY, FashionConfig)
needs_data = pytest.mark.skipif(
    not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="Debian's dataset-fashion-mnist is not installed"
)


@needs_data
def test_written_clips_decode_to_the_raw_frames_up_to_the_codec(tmp_path: Path) -> None:
    model = spread_exit_model(get_config("tiny").replace(num_classes=10))
    report = served_report(model, TINY, tmp_path, "test", 5, 6, batch_size=4)
    written, raw = WrittenClips(tmp_path, 4, 32), FashionDataset(TINY, "test", 5, 6)
    assert len(list(tmp_path.glob("clip_*.mp4"))) == 6
    for i in range(6):
        (f_w, y_w, b_w), (f_r, y_r, b_r) = written[i], raw[i]
        assert y_w == y_r and (b_w == b_r).all() and f_w.shape == f_r.shape
        loss = np.abs(f_w.float().numpy() - f_r.float().numpy()).mean()  # H.264 4:2:0 of noisy 32 px frames
        other = np.abs(f_w.float().numpy() - raw[(i + 1) % 6][0].float().numpy()).mean()
        assert loss < 20 and other > 2 * loss  # a lossy copy of its own clip, not of another
    assert set(report["raw"]) == {"all", *written.kinds.tolist()}
    assert len(report["raw"]["all"]) == len(report["served"]["all"]) == 4  # exits 0..K of the tiny config
    assert 0.0 <= report["same_prediction"] <= 1.0


def test_the_served_table_sits_in_the_cards_results() -> None:
    served = {
        "data": "clips",
        "raw": {"all": [0.5, 0.75], "small": [0.25, 0.5]},
        "served": {"all": [0.5, 0.625], "small": [0.25, 0.5]},
        "same_prediction": 0.875,
    }
    table = served_section(served)
    assert "| 1 | 75.0 / 62.5 | 50.0 / 50.0 | -12.5 |" in table and "| 0 | 50.0 / 50.0 | 25.0 / 25.0 | +0.0 |" in table
    assert "87.5% of (clip, exit) pairs" in table
    assert table in results_section({**card_report(True), "served": served}, "calib", "f.png")
    assert "Served path" not in results_section(card_report(True), "calib", "f.png")
