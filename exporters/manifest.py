"""The ONNX export directory: its layout, its manifest, and the checks that refuse a corrupt or mismatched one.

Layout::

    manifest.json          ExportManifest: bundle hash, opset, every graph's input/output names, dtypes, shapes,
                           and the sha256 of every graph file
    glance.onnx            frames_small (B, 3, T, g, g) float -> centres, logits, global_feats, pooled, step
    focus.onnx             cubes (B, 3, t, h, w) uint8, global_feats, pooled, step -> logits, next_pooled, next_step
    parity_report.json     the export's own check against PyTorch (``exporters.validate``)
    bundle/                a verbatim copy of the source bundle, so the directory can be served on its own

Nothing here imports torch or onnxruntime itself: the runner, the exporter and the CLI all share these checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.bundle import hash_mismatch
from model.config import AdaFocusConfig

if TYPE_CHECKING:  # only read for its attributes: no torch import here
    from model.adafocus import AdaFocusV3

EXPORT_FORMAT_VERSION = 1
EXPORT_KIND = "adafocus-onnx-export"
EXPORT_MANIFEST = "manifest.json"
BUNDLE_SUBDIR = "bundle"
PARITY_REPORT = "parity_report.json"
GRAPH_FILES = {"glance": "glance.onnx", "focus": "focus.onnx"}
BATCH = "batch"  # the one dynamic axis of every input and output


class ExportError(RuntimeError):
    """An ONNX export directory that is missing files, fails its hash check, or does not fit the bundle."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, uint8, int64
    shape: tuple[int | str, ...]  # "batch" marks the dynamic axis

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))


@dataclass(frozen=True)
class GraphSpec:
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphSpec:
        return cls(
            str(data["file"]),
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )


def graph_specs(config: AdaFocusConfig, global_dim: int, pooled_dim: int) -> dict[str, GraphSpec]:
    """The inputs and outputs both graphs must have for a model of this config (f_G / f_C widths given)."""
    c = config
    B = BATCH
    state = (
        TensorSpec("global_feats", "float32", (B, global_dim)),
        TensorSpec("pooled", "float32", (B, pooled_dim)),
        TensorSpec("step", "int64", (B,)),
    )
    glance = GraphSpec(
        GRAPH_FILES["glance"],
        inputs=(TensorSpec("frames_small", "float32", (B, 3, c.num_frames, c.glance_size, c.glance_size)),),
        outputs=(
            TensorSpec("centres", "float32", (B, c.num_cubes, 3)),
            TensorSpec("logits", "float32", (B, c.num_classes)),
            *state,
        ),
    )
    focus = GraphSpec(
        GRAPH_FILES["focus"],
        inputs=(TensorSpec("cubes", "uint8", (B, 3, c.cube_frames, c.cube_size, c.cube_size)), *state),
        outputs=(
            TensorSpec("logits", "float32", (B, c.num_classes)),
            TensorSpec("next_pooled", "float32", (B, pooled_dim)),
            TensorSpec("next_step", "int64", (B,)),
        ),
    )
    return {"glance": glance, "focus": focus}


@dataclass(frozen=True)
class ExportManifest:
    bundle_sha256: str  # the bundle the graphs were exported from (and that bundle/ holds)
    config_name: str
    opset: int
    exporter: str  # "torchscript" (torch.onnx legacy) or "dynamo"
    torch_version: str
    onnx_version: str
    graphs: dict[str, GraphSpec]
    files: dict[str, str]  # graph file name -> sha256
    format_version: int = EXPORT_FORMAT_VERSION
    kind: str = EXPORT_KIND

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format_version": self.format_version,
            "bundle_sha256": self.bundle_sha256,
            "config_name": self.config_name,
            "opset": self.opset,
            "exporter": self.exporter,
            "torch_version": self.torch_version,
            "onnx_version": self.onnx_version,
            "graphs": {name: g.to_dict() for name, g in self.graphs.items()},
            "files": dict(self.files),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportManifest:
        return cls(
            bundle_sha256=str(data["bundle_sha256"]),
            config_name=str(data["config_name"]),
            opset=int(data["opset"]),
            exporter=str(data["exporter"]),
            torch_version=str(data["torch_version"]),
            onnx_version=str(data["onnx_version"]),
            graphs={name: GraphSpec.from_dict(g) for name, g in data["graphs"].items()},
            files={str(k): str(v) for k, v in data["files"].items()},
            format_version=int(data["format_version"]),
            kind=str(data["kind"]),
        )

    def write(self, directory: Path) -> Path:
        path = directory / EXPORT_MANIFEST
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def model_specs(model: AdaFocusV3) -> dict[str, GraphSpec]:
    """The graph signatures a model of this architecture exports to (and an export must match to be served)."""
    return graph_specs(model.config, model.global_dim, model.config.classifier_hidden)


def is_export_dir(path: str | Path) -> bool:
    """True when ``path`` holds an ONNX export manifest (whether or not it verifies)."""
    try:
        data = json.loads((Path(path) / EXPORT_MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == EXPORT_KIND


def read_manifest(path: str | Path) -> ExportManifest:
    root = Path(path)
    if not root.is_dir():
        raise ExportError(f"ONNX export directory {root} does not exist")
    try:
        data = json.loads((root / EXPORT_MANIFEST).read_text())
    except FileNotFoundError:
        raise ExportError(f"{root} is not an ONNX export: no {EXPORT_MANIFEST}") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{root / EXPORT_MANIFEST} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") != EXPORT_KIND:
        raise ExportError(f"{root / EXPORT_MANIFEST} is not an ONNX export manifest (kind {EXPORT_KIND!r} expected)")
    if data.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ExportError(f"unsupported ONNX export format {data.get('format_version')!r}")
    try:
        return ExportManifest.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExportError(f"{root / EXPORT_MANIFEST} is malformed: {exc!r}") from exc


def verify_export(
    path: str | Path,
    bundle_sha256: str | None = None,
    expected: dict[str, GraphSpec] | None = None,
) -> ExportManifest:
    """Refuse an export whose files, bundle or graph signatures are not what the caller will serve.

    Checks, in order: manifest readable; every graph listed and hashed; each file present with its hash;
    the bundle hash equals ``bundle_sha256`` (when given); the graph specs equal ``expected`` (when given).
    """
    root = Path(path)
    manifest = read_manifest(root)
    missing = [name for name in GRAPH_FILES if name not in manifest.graphs]
    if missing:
        raise ExportError(f"{root / EXPORT_MANIFEST} lists no {missing} graph")
    for name, graph in manifest.graphs.items():
        if graph.file not in manifest.files:
            raise ExportError(f"{root / EXPORT_MANIFEST} lists no hash for the {name} graph {graph.file}")
    bad = hash_mismatch(root, manifest.files)
    if bad is not None and bad.actual is None:
        raise ExportError(f"ONNX export file {bad.name} is missing from {root}")
    if bad is not None:
        raise ExportError(f"hash mismatch for {bad.name} in {root}: {bad.digests}")
    if bundle_sha256 is not None and manifest.bundle_sha256 != bundle_sha256:
        raise ExportError(
            f"ONNX export {root} was made from bundle {manifest.bundle_sha256[:12]}..., "
            f"not from the bundle being served ({bundle_sha256[:12]}...); re-export it"
        )
    if expected is not None:
        for name, spec in expected.items():
            got = manifest.graphs.get(name)
            if got != spec:
                raise ExportError(
                    f"ONNX export {root}: the {name} graph does not fit the model: manifest says "
                    f"{_describe(got)}, the model needs {_describe(spec)}"
                )
    return manifest


def _describe(spec: GraphSpec | None) -> str:
    if spec is None:
        return "nothing"
    ins = ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in spec.inputs)
    outs = ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in spec.outputs)
    return f"({ins}) -> ({outs})"
