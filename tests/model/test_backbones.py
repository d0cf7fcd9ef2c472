import pytest
import torch

from model.backbones import mobilenet_v2, resnet18, resnet34, resnet50


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("factory", "expected"),
    [(mobilenet_v2, 3_504_872), (resnet18, 11_689_512), (resnet34, 21_797_672), (resnet50, 25_557_032)],
)
def test_parameter_counts_match_torchvision(factory, expected) -> None:
    assert n_params(factory()) == expected


def test_state_dict_keys_follow_torchvision_layout() -> None:
    mn = mobilenet_v2().state_dict()
    assert mn["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert mn["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # t=1 block: depthwise first
    assert mn["features.2.conv.0.0.weight"].shape == (96, 16, 1, 1)  # t=6 block: expansion first
    assert mn["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert mn["classifier.1.weight"].shape == (1000, 1280)
    rn = resnet50().state_dict()
    assert rn["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert rn["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert rn["fc.weight"].shape == (1000, 2048)


def test_state_dict_round_trips_strictly() -> None:
    src, dst = resnet18(), resnet18()
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    src.eval()
    dst.eval()
    assert torch.equal(src(x), dst(x))


def test_feature_maps_and_strides() -> None:
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert mobilenet_v2(0.5).forward_features(x).shape == (2, 1280, 7, 7)
        r = resnet50()
        assert r.forward_features(x).shape == (2, 2048, 7, 7)
        assert r.total_stride == 32
        assert resnet18(num_classes=10)(x).shape == (2, 10)


def test_width_multiplier_shrinks_mobilenet() -> None:
    assert n_params(mobilenet_v2(0.5)) < n_params(mobilenet_v2(1.0)) < n_params(mobilenet_v2(1.4))
