"""The own-data path end to end on the tiny config: class folders of MP4 files -> ``adafocus train`` started from
torchvision-format backbone weights -> ``adafocus calibrate`` on class folders -> a real ``adafocus serve``
(uvicorn) -> ``/classify`` over HTTP with the project's client, answered as the bundle predicts in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model.bundle import load_bundle
from model.config import get_config
from model.exits import staged_exit_logits
from model.video import decode_clip, encode_video
from service.cli import main
from service.client import Client
from tests.model import torchvision_layout as tv
from tests.service.conftest import ramp, serve

CLASSES = ("boots", "coats", "shirts")


def write_class_folders(root: Path, per_class: int) -> list[Path]:
    """``root/<class>/clip_i.mp4``: a moving pattern per class (its seed), brightened per clip."""
    paths = []
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            frames = np.clip(ramp(8, 32, 32, seed=c).astype(np.int16) + 6 * i, 0, 255).astype(np.uint8)
            paths.append(encode_video(root / name / f"clip_{i}.mp4", frames, "libx264"))
    return paths


def write_backbone_weights(tmp: Path) -> tuple[Path, Path]:
    """ImageNet-style files in torchvision's layout for the tiny config's f_G (.pth) and f_L (.safetensors)."""
    g, local = get_config("tiny").glance, get_config("tiny").local
    layouts = (tv.mobilenet_v2(g.setting, g.width_mult, g.stem_channels, g.last_channel),
               tv.resnet("basic", local.layers, local.base_channels))  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    states = [
        {k: torch.tensor(0) if k.endswith("tracked") else torch.randn(s, generator=gen) * 0.1 for k, s in lay.items()}
        for lay in layouts
    ]
    for state in states:  # BatchNorm variances must stay positive
        for k in [k for k in state if k.endswith("running_var")]:
            state[k] = state[k].abs() + 1.0
    torch.save(states[0], tmp / "mobilenet_v2.pth")
    save_file(states[1], str(tmp / "resnet.safetensors"))
    return tmp / "mobilenet_v2.pth", tmp / "resnet.safetensors"


def test_class_folders_train_from_backbone_weights_calibrate_serve_and_classify(tmp_path: Path) -> None:
    clips = write_class_folders(tmp_path / "data", per_class=4)
    glance_file, local_file = write_backbone_weights(tmp_path)
    bundle = tmp_path / "bundle"
    assert main([
        "train", "--config", "tiny", "--data", str(tmp_path / "data"), "--stages", "random:3,policy:3,deep_feature:3",
        "--batch-size", "4", "--backbone-weights", f"glance={glance_file},local={local_file}",
        "--run-dir", str(tmp_path / "run"), "--out", str(bundle), "--no-progress",
    ]) == 0  # fmt: skip
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["config"]["backbone_weights"] == [["glance", str(glance_file)], ["local", str(local_file)]]
    assert "--backbone-weights" in (bundle / "model_card.md").read_text()
    trained = load_file(str(bundle / "weights.safetensors"))
    started = load_file(str(local_file))
    moved = (trained["local_encoder.conv1.weight"] - started["conv1.weight"]).abs().max().item()
    assert 0 < moved < 0.05  # trained on from the file's weights (nine steps of lr 1e-3), not from a fresh init
    assert main([
        "calibrate", "--bundle", str(bundle), "--calib-data", str(tmp_path / "data"),
        "--test-data", str(tmp_path / "data"), "--batch-size", "8",
    ]) == 0  # fmt: skip
    loaded = load_bundle(bundle)
    assert loaded.config.class_names == CLASSES and "class folders under" in loaded.model_card
    for server in serve(bundle, tmp_path):
        with Client(server.url) as client:
            for path in (clips[0], clips[5], clips[11]):
                answer = client.classify(path)
                frames = torch.from_numpy(decode_clip(path, 4, 32)).permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, T, S, S)
                with torch.inference_mode():
                    logits = staged_exit_logits(loaded.model, loaded.model, frames)  # (1, K+1, classes)
                assert answer["label"] == CLASSES[answer["class_id"]]
                assert answer["class_id"] == int(logits[0, answer["exit_step"]].argmax())
                assert answer["budget"] == loaded.budgets.default
