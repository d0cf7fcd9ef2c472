from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model.adafocus import AdaFocusV3
from model.backbones import ResNet, ResNetConfig, mobilenet_v2, resnet18, resnet50
from model.config import get_config
from model.pretrained import (
    BackboneWeightsError,
    fit_state_dict,
    load_backbone_weights,
    parse_backbone_weights,
    read_state_dict,
)
from tests.model import torchvision_layout as tv


def layout_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_the_layout_written_from_torchvision_has_its_documented_sizes() -> None:
    assert len(tv.mobilenet_v2()) == 314 and tv.parameters(tv.mobilenet_v2()) == 3_504_872
    assert len(tv.resnet("bottleneck", (3, 4, 6, 3))) == 320
    assert tv.parameters(tv.resnet("bottleneck", (3, 4, 6, 3))) == 25_557_032
    assert tv.parameters(tv.resnet("basic", (2, 2, 2, 2))) == 11_689_512
    assert tv.mobilenet_v2()["features.18.0.weight"] == (1280, 320, 1, 1)
    assert tv.resnet("bottleneck", (3, 4, 6, 3))["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)


@pytest.mark.parametrize(
    ("build", "layout"),
    [
        (lambda: mobilenet_v2(), tv.mobilenet_v2()),
        (lambda: resnet50(), tv.resnet("bottleneck", (3, 4, 6, 3))),
        (lambda: resnet18(), tv.resnet("basic", (2, 2, 2, 2))),
    ],
)
def test_the_full_size_backbones_have_torchvisions_keys_and_shapes(build, layout) -> None:
    assert layout_of(build()) == layout


def tiny_layouts() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """torchvision-layout state dicts of the tiny config's f_G and f_L, ImageNet heads included."""
    g = get_config("tiny").glance
    glance = tv.mobilenet_v2(g.setting, g.width_mult, g.stem_channels, g.last_channel)
    local = tv.resnet("basic", get_config("tiny").local.layers, get_config("tiny").local.base_channels)
    return glance, local


def tensors(layout: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.rand(shape, generator=gen)
        for k, shape in layout.items()
    }


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_state_dicts_load_into_both_encoders_without_their_heads(tmp_path: Path, suffix: str) -> None:
    glance_layout, local_layout = tiny_layouts()
    glance, local = tensors(glance_layout, 1), tensors(local_layout, 2)
    paths = {}
    for name, state in (("glance", glance), ("local", local)):
        paths[name] = tmp_path / f"{name}{suffix}"
        torch.save(state, paths[name]) if suffix == ".pth" else save_file(state, str(paths[name]))
    model = AdaFocusV3(get_config("tiny"))
    policy_before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    load_backbone_weights(model, parse_backbone_weights(f"glance={paths['glance']},local={paths['local']}"))
    for encoder, state, head in ((model.global_encoder, glance, "classifier."), (model.local_encoder, local, "fc.")):
        loaded = encoder.state_dict()
        assert set(loaded) == {k for k in state if not k.startswith(head)}
        assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert all(torch.equal(v, policy_before[k]) for k, v in model.policy.state_dict().items())


def test_a_file_without_batchnorm_counters_loads(tmp_path: Path) -> None:
    _, local_layout = tiny_layouts()
    state = {k: v for k, v in tensors(local_layout, 3).items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(tmp_path / "old.safetensors"))
    model = AdaFocusV3(get_config("tiny"))
    load_backbone_weights(model, (("local", str(tmp_path / "old.safetensors")),))
    assert torch.equal(model.local_encoder.conv1.weight, state["conv1.weight"])


def test_a_mismatched_file_names_every_problem_and_loads_nothing(tmp_path: Path) -> None:
    glance_layout, local_layout = tiny_layouts()
    good = tensors(glance_layout, 1)
    bad = tensors(local_layout, 2)
    bad["conv1.weight"] = torch.zeros(8, 3, 7, 7)
    del bad["layer1.0.bn2.running_var"]
    bad["layer9.0.conv1.weight"] = torch.zeros(1)
    save_file(good, str(tmp_path / "g.safetensors"))
    save_file(bad, str(tmp_path / "l.safetensors"))
    model = AdaFocusV3(get_config("tiny"))
    before = model.global_encoder.features[0][0].weight.clone()
    with pytest.raises(BackboneWeightsError) as err:
        load_backbone_weights(
            model, (("glance", str(tmp_path / "g.safetensors")), ("local", str(tmp_path / "l.safetensors")))
        )
    message = str(err.value)
    assert "local weights" in message and "ResNet" in message
    assert "1 missing keys: layer1.0.bn2.running_var" in message
    assert "1 unexpected keys: layer9.0.conv1.weight" in message
    assert "1 shape mismatches: conv1.weight (8, 3, 7, 7) in the file, (16, 3, 7, 7) in the model" in message
    assert torch.equal(model.global_encoder.features[0][0].weight, before)  # the good glance file was not applied


def test_an_imagenet_resnet50_does_not_fit_a_small_local_encoder() -> None:
    state = {k: torch.empty(s) for k, s in tv.resnet("bottleneck", (3, 4, 6, 3)).items()}
    with pytest.raises(BackboneWeightsError, match=r"unexpected keys: layer1\.0\.conv3\.weight"):
        fit_state_dict(ResNet(ResNetConfig("basic", (2,), 64)), state, "local weights r50.pth")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("glance", "glance=PATH,local=PATH"), ("gaze=a.pth", "got 'gaze=a.pth'"), ("local=a,local=b", "twice")],
)
def test_bad_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(BackboneWeightsError, match=message):
        parse_backbone_weights(spec)


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x.pth").write_bytes(b"not a pickle")
    (tmp_path / "x.bin").write_bytes(b"")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(BackboneWeightsError, match="not a readable state dict"):
        read_state_dict(tmp_path / "x.pth")
    with pytest.raises(BackboneWeightsError, match=r"must be \.pth, \.pt or \.safetensors"):
        read_state_dict(tmp_path / "x.bin")
    with pytest.raises(BackboneWeightsError, match="does not hold a state dict"):
        read_state_dict(tmp_path / "list.pth")
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        read_state_dict(tmp_path / "none.pth")


def test_the_train_command_refuses_bad_backbone_weights_with_one_line(tmp_path: Path, capsys) -> None:
    from service.cli import main

    base = ["train", "--config", "tiny", "--data", "synth:easy", "--out", str(tmp_path / "b"), "--no-progress"]
    assert main([*base, "--backbone-weights", f"local={tmp_path / 'none.pth'}"]) == 2
    assert capsys.readouterr().err == f"adafocus train: backbone weights file {tmp_path / 'none.pth'} does not exist\n"
    assert main([*base, "--backbone-weights", "local=a.pth", "--init-from", "w.safetensors"]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
