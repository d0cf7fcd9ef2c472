"""The encoders started from torchvision-format state dicts (``adafocus train --backbone-weights ...``).

The backbones (``model.backbones``) carry torchvision's parameter names, so a MobileNetV2 / ResNet state dict a
user has (ImageNet weights saved by torchvision, ``.pth`` or ``.safetensors``) loads into f_G / f_L as it is. The
check is strict: every key of the encoder must be in the file with the same shape, and the file may hold nothing
else, except the classification head (``classifier.*`` of MobileNetV2, ``fc.*`` of ResNet), which is dropped, and
BatchNorm's ``num_batches_tracked`` counters, which files saved before torch 0.4.1 lack. Anything else is a
``BackboneWeightsError`` naming the missing, unexpected and mismatched keys with their shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from model.backbones import MobileNetV2, ResNet

ENCODERS = {"glance": "global_encoder", "local": "local_encoder"}  # --backbone-weights name -> AdaFocusV3 attribute
HEADS = {MobileNetV2: "classifier.", ResNet: "fc."}  # torchvision's classification head of each family
SHOWN = 8  # keys listed per kind of problem in an error message


class BackboneWeightsError(ValueError):
    """A backbone weights file that cannot be read, or does not fit the encoder."""


def parse_backbone_weights(spec: str) -> tuple[tuple[str, str], ...]:
    """``glance=PATH,local=PATH`` (either or both) as ((name, path), ...); raises ``BackboneWeightsError``."""
    out: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        name, sep, path = item.partition("=")
        if not sep or not path or name not in ENCODERS:
            raise BackboneWeightsError(f"--backbone-weights wants glance=PATH,local=PATH; got {item!r}")
        if name in out:
            raise BackboneWeightsError(f"--backbone-weights names {name} twice")
        out[name] = path
    return tuple(out.items())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pth``/``.pt`` (loaded with ``weights_only=True``: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state: object = load_file(str(path))
        elif path.suffix in (".pth", ".pt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise BackboneWeightsError(f"{path}: backbone weights must be .pth, .pt or .safetensors")
    except BackboneWeightsError:
        raise
    except Exception as exc:  # a corrupt or foreign file: torch and safetensors raise many types
        raise BackboneWeightsError(f"{path} is not a readable state dict: {exc}") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BackboneWeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def _listed(title: str, keys: list[str]) -> str:
    more = f" ... and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return f"{len(keys)} {title}: " + ", ".join(keys[:SHOWN]) + more


def fit_state_dict(encoder: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``state`` without the classification head, checked against ``encoder`` (strict; see the module docstring)."""
    head = next(prefix for family, prefix in HEADS.items() if isinstance(encoder, family))
    wanted = encoder.state_dict()
    given = {k: v for k, v in state.items() if not k.startswith(head)}
    missing = [k for k in wanted if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in wanted]
    mismatched = [
        f"{k} {_shape(given[k])} in the file, {_shape(wanted[k])} in the model"
        for k in wanted
        if k in given and given[k].shape != wanted[k].shape
    ]
    problems = [
        _listed(title, keys)
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise BackboneWeightsError(
            f"{source} does not fit the {type(encoder).__name__} of this config ({head}* ignored): "
            + "; ".join(problems)
        )
    return given


def load_backbone_weights(model: nn.Module, files: tuple[tuple[str, str], ...]) -> None:
    """Load each (``glance`` | ``local``, path) into the model's f_G / f_L, strictly; nothing is loaded unless
    every file fits."""
    fitted = []
    for name, path in files:
        encoder = getattr(model, ENCODERS[name])
        fitted.append((encoder, fit_state_dict(encoder, read_state_dict(path), f"{name} weights {path}")))
    for encoder, state in fitted:
        encoder.load_state_dict(state, strict=False)  # strictness was checked above (num_batches_tracked may lack)
