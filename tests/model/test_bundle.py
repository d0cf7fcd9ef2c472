from pathlib import Path

import pytest
import torch

from model.adafocus import AdaFocusV3
from model.bundle import BundleError, load_bundle, save_bundle
from model.config import get_config
from model.testing import fixed_budgets, spread_exit_model


def make_bundle(tmp_path: Path) -> tuple[Path, AdaFocusV3]:
    model = spread_exit_model(get_config("tiny"))
    return save_bundle(tmp_path / "b", model, fixed_budgets(model), "# card\n"), model


def test_bundle_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    path, model = make_bundle(tmp_path)
    bundle = load_bundle(path)
    video = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(bundle.model(video).exit_logits, model(video).exit_logits)
    assert bundle.budgets == fixed_budgets(model)
    assert bundle.budgets.get("high").thresholds == (0.0, 0.0, 0.0, 0.0)
    assert len(bundle.sha256) == 64


def test_bundle_with_tampered_weights_is_refused(tmp_path: Path) -> None:
    path, _ = make_bundle(tmp_path)
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"hash mismatch for weights\.safetensors"):
        load_bundle(path)


def test_bundle_without_manifest_is_refused(tmp_path: Path) -> None:
    path, _ = make_bundle(tmp_path)
    (path / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(path)
