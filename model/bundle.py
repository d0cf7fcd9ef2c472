"""Model bundles: a directory that a server loads without ever unpickling code.

Layout::

    config.json          {"format_version": 1, "model": AdaFocusConfig as JSON, "benchmark": preset or null}
    weights.safetensors  the state dict (tensors only)
    budgets.json         BudgetTable as JSON (named threshold sets)
    model_card.md        data, training command, measured results
    manifest.json        {"format_version": 1, "files": {name: sha256}, "bundle_sha256": ...}

Loading checks every file's hash against the manifest first and refuses a bundle that does not match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.adafocus import AdaFocusV3
from model.budgets import BudgetError, BudgetTable
from model.config import AdaFocusConfig

FORMAT_VERSION = 1
BUNDLE_FILES = ("config.json", "weights.safetensors", "budgets.json", "model_card.md")
MANIFEST = "manifest.json"
# The bundle the server loads when none is named (trained by `adafocus train`, see its model_card.md).
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "bundles" / "default"


class BundleError(RuntimeError):
    """A bundle that is missing files, fails its hash check, or does not fit its own config."""


@dataclass
class Bundle:
    path: Path
    config: AdaFocusConfig
    model: AdaFocusV3
    budgets: BudgetTable
    sha256: str  # hash over the manifest's file hashes: identifies these exact weights and thresholds
    model_card: str
    benchmark: str | None = None  # the generated benchmark preset it was trained on (``model.data.datasets.PRESETS``)

    def info(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "config": self.config.to_dict(),
            "labels": list(self.config.class_names),
            "budgets": self.budgets.to_dict(),
            "benchmark": self.benchmark,
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def combined_hash(files: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}:{files[k]}\n" for k in sorted(files)).encode()).hexdigest()


@dataclass(frozen=True)
class HashMismatch:
    """A file that a manifest lists with its sha256, and that is missing or holds other bytes."""

    name: str  # relative to the manifest's directory
    expected: str  # the manifest's sha256
    actual: str | None  # the file's sha256; None: the file is missing

    @property
    def digests(self) -> str:
        return f"manifest {self.expected[:12]}..., file {(self.actual or '')[:12]}..."


def hash_mismatch(root: Path, files: Mapping[str, str]) -> HashMismatch | None:
    """The one hash check of a manifest's files (name -> sha256) under ``root``, for bundles and ONNX exports
    alike: the first file that is missing or whose hash differs, else None. Each caller words its own error."""
    for name, expected in files.items():
        file = root / name
        if not file.is_file():
            return HashMismatch(name, expected, None)
        actual = file_sha256(file)
        if actual != expected:
            return HashMismatch(name, expected, actual)
    return None


def save_bundle(
    path: str | Path, model: AdaFocusV3, budgets: BudgetTable, model_card: str, benchmark: str | None = None
) -> Path:
    """Write a complete bundle (overwriting files of the same names) and its manifest."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config_json: dict[str, Any] = {"format_version": FORMAT_VERSION, "model": model.config.to_dict()}
    if benchmark is not None:
        config_json["benchmark"] = benchmark
    (out / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "weights.safetensors"), metadata={"format": "pt"})
    (out / "budgets.json").write_text(json.dumps(budgets.to_dict(), indent=2) + "\n")
    (out / "model_card.md").write_text(model_card)
    files = {name: file_sha256(out / name) for name in BUNDLE_FILES}
    manifest = {"format_version": FORMAT_VERSION, "files": files, "bundle_sha256": combined_hash(files)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def verify_manifest(path: Path) -> str:
    """Check every file against the manifest; returns the bundle hash or raises BundleError."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files: dict[str, str] = manifest["files"]
    except FileNotFoundError:
        raise BundleError(f"{path} is not a model bundle: no {MANIFEST}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f"{path / MANIFEST} is malformed: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"unsupported bundle format {manifest.get('format_version')!r}")
    missing = [name for name in BUNDLE_FILES if name not in files]
    if missing:
        raise BundleError(f"manifest lists no hash for {missing}")
    bad = hash_mismatch(path, files)
    if bad is not None and bad.actual is None:
        raise BundleError(f"bundle file {bad.name} is missing from {path}")
    if bad is not None:
        raise BundleError(f"hash mismatch for {bad.name}: {bad.digests}")
    return combined_hash(files)


def load_bundle(path: str | Path | None = None, device: str | torch.device = "cpu") -> Bundle:
    """Verify and load a bundle (default: the shipped one); the model is in eval mode on ``device``."""
    root = Path(path) if path is not None else DEFAULT_BUNDLE
    if not root.is_dir():
        raise BundleError(f"bundle directory {root} does not exist")
    sha = verify_manifest(root)
    try:
        config_json = json.loads((root / "config.json").read_text())
        config = AdaFocusConfig.from_dict(config_json["model"])
        budgets = BudgetTable.from_dict(json.loads((root / "budgets.json").read_text()), config.num_cubes + 1)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, BudgetError) as exc:
        raise BundleError(f"bundle {root} has an invalid config or budgets: {exc}") from exc
    model = AdaFocusV3(config)
    state = load_file(str(root / "weights.safetensors"))  # tensors only: no pickle
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"weights do not fit the config: {exc}") from exc
    model.to(device).eval()
    benchmark = config_json.get("benchmark")
    return Bundle(root, config, model, budgets, sha, (root / "model_card.md").read_text(), benchmark)
