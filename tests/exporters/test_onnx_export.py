"""ONNX export of the staged model: checked graphs, manifest, parity report, and refusal of bad directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from exporters.manifest import (
    BUNDLE_SUBDIR,
    EXPORT_MANIFEST,
    PARITY_REPORT,
    ExportError,
    is_export_dir,
    model_specs,
    verify_export,
)
from exporters.onnx_export import export_bundle, prepare_out_dir
from exporters.onnx_runner import OnnxRunner
from exporters.validate import decide, read_report
from model.bundle import DEFAULT_BUNDLE, Bundle, file_sha256, load_bundle
from service.cli import main
from tests.exporters.tiny import make_tiny_bundle


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    bundle = make_tiny_bundle(root / "bundle")
    export_bundle(bundle, root / "onnx")
    return bundle, root / "onnx"


def corrupt_copy(export: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(export, target)
    return target


def test_export_writes_checked_graphs_and_a_manifest(tiny: tuple[Bundle, Path]) -> None:
    bundle, export = tiny
    manifest = verify_export(export, bundle.sha256, model_specs(bundle.model))
    assert manifest.bundle_sha256 == bundle.sha256
    assert manifest.opset == 17
    assert manifest.exporter == "torchscript"
    assert manifest.config_name == "tiny"
    assert sorted(manifest.files) == ["focus.onnx", "glance.onnx"]
    for name, spec in manifest.graphs.items():
        graph = onnx.load(str(export / spec.file))
        onnx.checker.check_model(graph, full_check=True)
        assert [i.name for i in graph.graph.input] == [t.name for t in spec.inputs], name
        batch_dims = [i.type.tensor_type.shape.dim[0].dim_param for i in graph.graph.input]
        assert batch_dims == ["batch"] * len(spec.inputs)
    glance = manifest.graphs["glance"]
    assert [(t.name, t.dtype, t.shape) for t in glance.inputs] == [("frames_small", "float32", ("batch", 3, 4, 16, 16))]
    assert [t.name for t in glance.outputs] == ["centres", "logits", "global_feats", "pooled", "step"]
    focus = manifest.graphs["focus"]
    assert [(t.name, t.dtype) for t in focus.inputs] == [
        ("cubes", "uint8"),
        ("global_feats", "float32"),
        ("pooled", "float32"),
        ("step", "int64"),
    ]
    assert [t.name for t in focus.outputs] == ["logits", "next_pooled", "next_step"]
    copied = load_bundle(export / BUNDLE_SUBDIR)  # the export carries its bundle, verified by its own manifest
    assert copied.sha256 == bundle.sha256


def test_parity_report_shows_equal_outputs_and_identical_decisions(tiny: tuple[Bundle, Path]) -> None:
    _, export = tiny
    report = read_report(export)
    assert report["passed"] is True
    assert report["failures"] == []
    assert report["clip_source"] == "`synth` clips at 32 px, stream seed 2"
    assert set(report["random"]) == set(report["real"])
    assert len(report["random"]) == 8  # 5 glance outputs + 3 focus outputs
    assert max(report["random"].values()) < 1e-4
    assert max(report["real"].values()) < 1e-4
    assert report["random"]["glance.step"] == 0.0 and report["real"]["focus.next_step"] == 0.0
    assert set(report["decisions"]) == {"fast", "mid", "full"}
    for decision in report["decisions"].values():
        assert decision["labels_identical"] and decision["exit_steps_identical"]
        assert decision["differing_clips"] == 0
        assert sum(decision["exit_step_counts"]) == 16
    fast = report["decisions"]["fast"]["exit_step_counts"]
    assert sum(1 for count in fast if count) >= 2  # exits really vary: the check is not all-at-exit-K
    assert report["decisions"]["full"]["exit_step_counts"] == [0, 0, 0, 16]


def test_decide_takes_the_first_exit_within_threshold() -> None:
    # 2 clips, 3 exits, 2 classes: clip 0 is confident at exit 1, clip 1 never is (stops at the last exit)
    logits = torch.tensor(
        [
            [[0.0, 0.0], [0.0, 9.0], [9.0, 0.0]],
            [[0.0, 0.0], [0.1, 0.0], [0.0, 0.2]],
        ]
    )
    labels, steps = decide(logits, (0.1, 0.1, 0.0), "entropy")
    assert steps == [1, 2]
    assert labels == [1, 1]


def test_export_command(tiny: tuple[Bundle, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle, _ = tiny
    out = tmp_path / "cli"
    assert main(["export", "onnx", "--bundle", str(bundle.path), "--out", str(out), "--clips", "4"]) == 0
    printed = capsys.readouterr().out
    assert "parity passed" in printed
    assert f"exported bundle {bundle.sha256[:12]}" in printed
    assert is_export_dir(out)
    assert (out / PARITY_REPORT).is_file()


def test_export_command_reports_a_bad_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "onnx", "--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "adafocus export onnx: bundle directory" in capsys.readouterr().err


def test_export_refuses_to_write_into_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(ExportError, match="not empty and is not an ONNX export"):
        prepare_out_dir(tmp_path)


def test_tampered_graph_is_refused(tiny: tuple[Bundle, Path], tmp_path: Path) -> None:
    bundle, export = tiny
    bad = corrupt_copy(export, tmp_path)
    data = bytearray((bad / "glance.onnx").read_bytes())
    data[-1] ^= 0xFF
    (bad / "glance.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"hash mismatch for glance\.onnx"):
        OnnxRunner(bad, bundle_sha256=bundle.sha256)


def test_missing_graph_is_refused(tiny: tuple[Bundle, Path], tmp_path: Path) -> None:
    bundle, export = tiny
    bad = corrupt_copy(export, tmp_path)
    (bad / "focus.onnx").unlink()
    with pytest.raises(ExportError, match=r"focus\.onnx is missing"):
        OnnxRunner(bad, bundle_sha256=bundle.sha256)


def test_directory_without_manifest_is_refused(tiny: tuple[Bundle, Path], tmp_path: Path) -> None:
    _, export = tiny
    bad = corrupt_copy(export, tmp_path)
    (bad / EXPORT_MANIFEST).unlink()
    with pytest.raises(ExportError, match=r"is not an ONNX export: no manifest\.json"):
        OnnxRunner(bad)


def test_export_of_another_bundle_is_refused(tiny: tuple[Bundle, Path]) -> None:
    _, export = tiny
    with pytest.raises(ExportError, match="not from the bundle being served"):
        OnnxRunner(export, bundle_sha256="0" * 64)


def test_export_with_wrong_shapes_is_refused(tiny: tuple[Bundle, Path], tmp_path: Path) -> None:
    bundle, export = tiny
    other = bundle.model.config.replace(glance_size=8)  # same network, another glance resolution
    expected = model_specs(bundle.model)
    expected["glance"] = model_specs(type(bundle.model)(other))["glance"]
    with pytest.raises(ExportError, match="the glance graph does not fit the model"):
        OnnxRunner(export, bundle_sha256=bundle.sha256, expected=expected)


def test_graph_that_contradicts_its_manifest_is_refused(tiny: tuple[Bundle, Path], tmp_path: Path) -> None:
    bundle, export = tiny
    bad = corrupt_copy(export, tmp_path)
    shutil.copyfile(bad / "focus.onnx", bad / "glance.onnx")  # swapped file, hash updated to match
    manifest = json.loads((bad / EXPORT_MANIFEST).read_text())
    manifest["files"]["glance.onnx"] = file_sha256(bad / "glance.onnx")
    (bad / EXPORT_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="graph inputs are"):
        OnnxRunner(bad, bundle_sha256=bundle.sha256, expected=model_specs(bundle.model))


@pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").is_file(), reason="no shipped bundle in this checkout")
def test_shipped_bundle_exports_with_parity(tmp_path: Path) -> None:
    bundle = load_bundle()
    manifest, report = export_bundle(bundle, tmp_path / "shipped", parity_clips=8)
    assert manifest.bundle_sha256 == bundle.sha256
    assert report["passed"] is True, report["failures"]
    assert all(d["labels_identical"] and d["exit_steps_identical"] for d in report["decisions"].values())
