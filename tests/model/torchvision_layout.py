"""torchvision's state-dict layout (key -> shape) of MobileNetV2 and ResNet, written from torchvision's own
construction rules (``torchvision/models/mobilenetv2.py``: ``features.<i>`` are ``Conv2dNormActivation``s (``0`` conv,
``1`` BatchNorm) and ``InvertedResidual``s (``conv.<j>``), then ``classifier.1``; ``torchvision/models/resnet.py``:
``conv1``/``bn1``, ``layer<s>.<b>.{conv,bn}<n>`` and ``downsample.{0,1}``, then ``fc``), independently of
``model.backbones``, so that the tests check the backbones against torchvision rather than against themselves.
torchvision itself does not import on this CPU-only torch build. Its documented parameter counts
(pytorch.org/vision, ``num_params``): MobileNet_V2 3,504,872, ResNet-50 25,557,032, ResNet-18 11,689,512.
"""

from __future__ import annotations

Layout = dict[str, tuple[int, ...]]
MOBILENET_V2 = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def divisible(v: float, d: int = 8) -> int:  # torchvision's _make_divisible
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def bn(out: Layout, key: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        out[f"{key}.{name}"] = (c,)
    out[f"{key}.num_batches_tracked"] = ()


def conv_bn(out: Layout, key: str, cin: int, cout: int, k: int, groups: int = 1) -> None:
    out[f"{key}.0.weight"] = (cout, cin // groups, k, k)
    bn(out, f"{key}.1", cout)


def mobilenet_v2(
    setting=MOBILENET_V2, width: float = 1.0, stem: int = 32, last: int = 1280, classes: int = 1000
) -> Layout:
    out: Layout = {}
    cin = divisible(stem * width)
    last_c = divisible(last * max(1.0, width))
    conv_bn(out, "features.0", 3, cin, 3)
    i = 1
    for t, c, n, _ in setting:
        cout = divisible(c * width)
        for _ in range(n):
            hidden, j = round(cin * t), 0
            if t != 1:
                conv_bn(out, f"features.{i}.conv.0", cin, hidden, 1)
                j = 1
            conv_bn(out, f"features.{i}.conv.{j}", hidden, hidden, 3, groups=hidden)
            out[f"features.{i}.conv.{j + 1}.weight"] = (cout, hidden, 1, 1)
            bn(out, f"features.{i}.conv.{j + 2}", cout)
            cin, i = cout, i + 1
    conv_bn(out, f"features.{i}", cin, last_c, 1)
    out["classifier.1.weight"], out["classifier.1.bias"] = (classes, last_c), (classes,)
    return out


def resnet(block: str, layers: tuple[int, ...], base: int = 64, classes: int = 1000) -> Layout:
    out: Layout = {"conv1.weight": (base, 3, 7, 7)}
    bn(out, "bn1", base)
    expansion = 4 if block == "bottleneck" else 1
    inplanes = base
    for s, blocks in enumerate(layers):
        planes = base * 2**s
        for b in range(blocks):
            key = f"layer{s + 1}.{b}"
            if block == "bottleneck":
                convs = [(inplanes, planes, 1), (planes, planes, 3), (planes, planes * 4, 1)]
            else:
                convs = [(inplanes, planes, 3), (planes, planes, 3)]
            for n, (cin, cout, k) in enumerate(convs, 1):
                out[f"{key}.conv{n}.weight"] = (cout, cin, k, k)
                bn(out, f"{key}.bn{n}", cout)
            if b == 0 and (s > 0 or inplanes != planes * expansion):
                out[f"{key}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(out, f"{key}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    out["fc.weight"], out["fc.bias"] = (classes, inplanes), (classes,)
    return out


def parameters(layout: Layout) -> int:
    """Learnable parameters (what torchvision's ``num_params`` counts: no BatchNorm buffers)."""
    total = 0
    for key, shape in layout.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
