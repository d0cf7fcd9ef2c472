"""Export the model's two serving stages as ONNX graphs with a dynamic batch axis.

- ``glance.onnx``: f_G on the whole low-resolution clip, the policy's K centres and exit 0 of f_C;
- ``focus.onnx``: one step of f_L on a cube plus f_C's next step. The classifier state (glance features, running
  max, step index) is an explicit input and output, and each sample gathers its own exit head, so one batch may
  mix samples at different steps, exactly as the PyTorch ``focus`` does.

The legacy TorchScript exporter is tried first (about 1 s per graph); the dynamo exporter (10-20 s) is the
fallback. Every graph passes ``onnx.checker.check_model(full_check=True)`` before the manifest is written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import onnx
import torch
from torch import nn

from exporters.manifest import (
    BATCH,
    BUNDLE_SUBDIR,
    GRAPH_FILES,
    PARITY_REPORT,
    ExportError,
    ExportManifest,
    GraphSpec,
    is_export_dir,
    model_specs,
    verify_export,
)
from exporters.validate import ParityOptions, check_parity
from model.adafocus import AdaFocusV3, FocusState
from model.budgets import BudgetTable
from model.bundle import BUNDLE_FILES, MANIFEST, Bundle, file_sha256

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
Exporter = Literal["torchscript", "dynamo"]


class GlanceGraph(nn.Module):
    """``AdaFocusV3.glance`` with a flat tuple of outputs (ONNX graphs have no named tuples)."""

    def __init__(self, model: AdaFocusV3) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames_small: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.glance(frames_small)
        return out.centres, out.logits, out.state.global_feats, out.state.pooled, out.state.step


class FocusGraph(nn.Module):
    """``AdaFocusV3.focus`` with the state unpacked into explicit inputs and outputs."""

    def __init__(self, model: AdaFocusV3) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, cubes: torch.Tensor, global_feats: torch.Tensor, pooled: torch.Tensor, step: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        logits, state = self.model.focus(cubes, FocusState(global_feats, pooled, step))
        return logits, state.pooled, state.step


def example_inputs(model: AdaFocusV3, batch: int = 2) -> dict[str, tuple[torch.Tensor, ...]]:
    """Tracing inputs; the focus steps differ per sample so the head gather is traced as a gather."""
    c = model.config
    gen = torch.Generator().manual_seed(0)
    frames_small = torch.rand(batch, 3, c.num_frames, c.glance_size, c.glance_size, generator=gen) * 255
    cubes = torch.randint(0, 256, (batch, 3, c.cube_frames, c.cube_size, c.cube_size), generator=gen)
    global_feats = torch.rand(batch, model.global_dim, generator=gen)
    pooled = torch.rand(batch, c.classifier_hidden, generator=gen)
    step = torch.arange(batch, dtype=torch.long) % c.num_cubes  # (B,) mixed steps
    return {
        "glance": (frames_small,),
        "focus": (cubes.to(torch.uint8), global_feats, pooled, step),
    }


def export_graph(
    module: nn.Module, args: tuple[torch.Tensor, ...], spec: GraphSpec, path: Path, opset: int, exporter: Exporter
) -> None:
    names = [t.name for t in (*spec.inputs, *spec.outputs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        if exporter == "torchscript":
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes={name: {0: BATCH} for name in names},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        else:
            batch = torch.export.Dim(BATCH, min=1, max=4096)
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_shapes=tuple({0: batch} for _ in spec.inputs),
                opset_version=opset,
                dynamo=True,
                external_data=False,
            )


def check_graph(path: Path, spec: GraphSpec) -> int:
    """ONNX checker (full, with shape inference) plus the input/output names the runner binds to.

    Returns the graph's actual default-domain opset (the dynamo exporter may raise the one asked for)."""
    graph_model = onnx.load(str(path))
    onnx.checker.check_model(graph_model, full_check=True)
    inputs = [i.name for i in graph_model.graph.input]
    outputs = [o.name for o in graph_model.graph.output]
    if inputs != [t.name for t in spec.inputs] or outputs != [t.name for t in spec.outputs]:
        raise ExportError(f"{path.name}: graph has inputs {inputs} / outputs {outputs}, expected {spec}")
    return max(o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx"))


@dataclass(frozen=True)
class ExportOptions:
    opset: int = DEFAULT_OPSET
    exporter: Exporter | Literal["auto"] = "auto"  # auto: torchscript, then dynamo if that fails


def export_model(
    model: AdaFocusV3, out_dir: Path, bundle_sha256: str, options: ExportOptions = ExportOptions()
) -> ExportManifest:
    """Write both graphs and the manifest into ``out_dir``; exports a CPU copy, ``model`` itself is untouched."""
    model = copy.deepcopy(model).cpu().eval()
    specs = model_specs(model)
    inputs = example_inputs(model)
    modules = {"glance": GlanceGraph(model).eval(), "focus": FocusGraph(model).eval()}
    order: list[Exporter] = ["torchscript", "dynamo"] if options.exporter == "auto" else [options.exporter]
    used: Exporter | None = None
    opsets: list[int] = []
    for exporter in order:
        try:
            for name, module in modules.items():
                start = time.perf_counter()
                export_graph(module, inputs[name], specs[name], out_dir / GRAPH_FILES[name], options.opset, exporter)
                opsets.append(check_graph(out_dir / GRAPH_FILES[name], specs[name]))
                log.info("exported %s with the %s exporter in %.1f s", name, exporter, time.perf_counter() - start)
            used = exporter
            break
        except Exception as exc:  # try the next exporter, report all failures together
            opsets.clear()
            log.warning("the %s ONNX exporter failed: %s", exporter, exc)
        finally:
            model.eval()  # torch.onnx.export restores the wrapper's training flag onto the model: undo it
    if used is None:
        raise ExportError(f"every ONNX exporter failed ({order}); see the log for each error")
    manifest = ExportManifest(
        bundle_sha256=bundle_sha256,
        config_name=model.config.name,
        opset=max(opsets),
        exporter=used,
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
        graphs=specs,
        files={spec.file: file_sha256(out_dir / spec.file) for spec in specs.values()},
    )
    manifest.write(out_dir)
    return manifest


def copy_bundle(bundle: Bundle, out_dir: Path) -> Path:
    """A verbatim copy of the bundle's files (its own manifest included) under ``out_dir/bundle``."""
    target = out_dir / BUNDLE_SUBDIR
    target.mkdir(parents=True, exist_ok=True)
    for name in (*BUNDLE_FILES, MANIFEST):
        shutil.copyfile(bundle.path / name, target / name)
    return target


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir``, refusing to write into a non-empty directory that is not an earlier export."""
    if out_dir.exists() and any(out_dir.iterdir()) and not is_export_dir(out_dir):
        raise ExportError(f"{out_dir} exists, is not empty and is not an ONNX export: refusing to write into it")
    out_dir.mkdir(parents=True, exist_ok=True)


def model_fingerprint(model: AdaFocusV3) -> str:
    """sha256 over the config and every tensor of the state dict: identifies a model that has no bundle."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_bundle(
    bundle: Bundle, out_dir: str | Path, options: ExportOptions = ExportOptions(), parity_clips: int = 16
) -> tuple[ExportManifest, dict[str, Any]]:
    """Export, copy the bundle, check parity against PyTorch and write the report into the directory.

    Returns the manifest and the parity report; the caller decides what a failed parity means (the CLI exits
    non-zero, the on-the-fly export in ``service.engine.runners.selection`` refuses to serve).
    """
    out = Path(out_dir)
    prepare_out_dir(out)
    (out / PARITY_REPORT).unlink(missing_ok=True)
    copy_bundle(bundle, out)
    manifest = export_model(bundle.model, out, bundle.sha256, options)
    options_ = ParityOptions(clips=parity_clips, benchmark=bundle.benchmark)
    return manifest, _parity(bundle.model, out, bundle.budgets, bundle.sha256, options_)


def _parity(
    model: AdaFocusV3, out: Path, budgets: BudgetTable | None, sha256: str, options: ParityOptions
) -> dict[str, Any]:
    report = check_parity(model, out, budgets, sha256, options)
    report.write(out / PARITY_REPORT)
    return report.to_dict()


def export_to_cache(
    model: AdaFocusV3,
    cache_root: Path,
    bundle: Bundle | None = None,
    options: ExportOptions = ExportOptions(),
) -> tuple[Path, str]:
    """Export into ``cache_root/<hash>`` unless a verified export is already there; returns (dir, hash).

    The hash is the bundle's when there is one (the export then carries the bundle and can be served on its
    own), else the model's fingerprint. The export is written into a temporary sibling first and renamed into
    place, so a crash or a concurrent process never leaves a half-written directory under the final name.
    """
    sha = bundle.sha256 if bundle is not None else model_fingerprint(model)
    final = cache_root / sha[:16]
    try:
        verify_export(final, sha, model_specs(model))
        log.info("reusing the cached ONNX export %s", final)
        return final, sha
    except ExportError as exc:
        if final.exists():
            log.warning("cached ONNX export %s is unusable (%s); exporting again", final, exc)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_root))
    try:
        if bundle is not None:
            _, report = export_bundle(bundle, tmp, options, parity_clips=4)
        else:
            export_model(model, tmp, sha, options)
            report = _parity(model, tmp, None, sha, ParityOptions(clips=4))
        if not report["passed"]:
            raise ExportError(f"the on-the-fly ONNX export fails its parity check: {report['failures']}")
        if final.exists():
            shutil.rmtree(final)
        try:
            tmp.rename(final)
        except OSError:  # another process renamed its own export into place first: use that one if it verifies
            verify_export(final, sha, model_specs(model))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final, sha
