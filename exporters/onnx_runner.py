"""The ONNX Runtime runner: the exported glance and focus graphs behind the engine's ``Runner`` protocol.

Everything is decided once, in the constructor (style anchor 9): the export directory is verified against the
bundle being served, the execution provider is chosen by actually creating a CUDA session and reading
``session.get_providers()`` (``get_available_providers()`` lists CUDA even on a machine without a GPU), thread
counts are pinned and spinning is off. ``glance`` and ``focus`` only bind tensors and run.

- CPU provider: torch tensors in and out, converted through numpy (zero-copy for contiguous CPU tensors).
- CUDA provider: IOBinding on torch's CUDA buffers, inputs and outputs stay on the GPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
import torch

from exporters.manifest import BATCH, ExportError, ExportManifest, GraphSpec, TensorSpec, verify_export
from model.adafocus import FocusState

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
_TORCH_DTYPES = {"float32": torch.float32, "uint8": torch.uint8, "int64": torch.int64}
_ORT_TYPES = {"float32": "tensor(float)", "uint8": "tensor(uint8)", "int64": "tensor(int64)"}


@dataclass(frozen=True)
class OrtOptions:
    intra_op_threads: int = 0  # threads inside one operator; 0 = one per usable CPU core, pinned at start
    inter_op_threads: int = 1  # graphs run sequentially, so one is enough
    # NOTE: ORT's intra-op threads spin by default and starve the decode workers and the HTTP loop on a small
    # machine (measured on 2 cores, research/environment-measurements.md); spinning stays off.
    allow_spinning: bool = False
    log_severity: int = 3  # ORT's own log level: 0 verbose .. 4 fatal
    io_binding_on_cpu: bool = False  # CUDA always binds torch's buffers; on the CPU it is optional


class OnnxGlance(NamedTuple):
    centres: torch.Tensor  # (B, K, 3)
    logits: torch.Tensor  # (B, classes)
    state: FocusState


def session_options(options: OrtOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads or len(os.sched_getaffinity(0)) or 1
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = options.log_severity
    spin = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return so


def create_session(path: Path, options: OrtOptions, want_cuda: bool, device_id: int = 0) -> ort.InferenceSession:
    """A session on CUDA when asked for and it really starts there, else on the CPU provider."""
    so = session_options(options)
    if want_cuda:
        providers: list[Any] = [(CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER]
        try:
            session = ort.InferenceSession(str(path), so, providers=providers)
            if session.get_providers()[0] == CUDA_PROVIDER:
                return session
            reason = f"the session came up on {session.get_providers()}"
        except Exception as exc:  # any failure to start on CUDA means: use the CPU
            reason = f"{type(exc).__name__}: {exc}"
        log.warning("ONNX Runtime CUDA provider does not work here (%s); using %s", reason, CPU_PROVIDER)
    return ort.InferenceSession(str(path), so, providers=[CPU_PROVIDER])


def check_session(session: ort.InferenceSession, spec: GraphSpec, path: Path) -> None:
    """The graph file itself must have the names, dtypes and shapes the manifest promises."""
    for kind, got, want in (
        ("input", session.get_inputs(), spec.inputs),
        ("output", session.get_outputs(), spec.outputs),
    ):
        actual = [(a.name, a.type, tuple(a.shape)) for a in got]
        expected = [(t.name, _ORT_TYPES[t.dtype], t.shape) for t in want]
        if actual != expected:
            raise ExportError(f"{path}: graph {kind}s are {actual}, the manifest promises {expected}")


class _Graph:
    """One ONNX session plus how to feed it: through numpy, or IOBinding on torch's own buffers (always on CUDA,
    where it keeps inputs and outputs on the GPU; optional on the CPU, where it saves the output copies)."""

    def __init__(self, session: ort.InferenceSession, spec: GraphSpec, device: torch.device, bound: bool) -> None:
        self.session = session
        self.spec = spec
        self.device = device
        self.bound = bound or device.type == "cuda"
        self.output_names = [t.name for t in spec.outputs]

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        if self.bound:
            return self._run_bound(inputs)
        feed = {t.name: _as_numpy(x, t) for t, x in zip(self.spec.inputs, inputs, strict=True)}
        return [torch.from_numpy(out) for out in self.session.run(self.output_names, feed)]

    def _run_bound(self, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Inputs and preallocated outputs bound by pointer: no copy in or out of ONNX Runtime."""
        batch = inputs[0].shape[0]
        binding = self.session.io_binding()
        kind, index = self.device.type, self.device.index or 0
        held = []  # the converted inputs must stay alive until the run is over
        for t, x in zip(self.spec.inputs, inputs, strict=True):
            x = x.detach().to(self.device, _TORCH_DTYPES[t.dtype]).contiguous()
            held.append(x)
            binding.bind_input(t.name, kind, index, np.dtype(t.dtype).type, tuple(x.shape), x.data_ptr())
        outputs = []
        for t in self.spec.outputs:
            shape = tuple(batch if d == BATCH else int(d) for d in t.shape)
            out = torch.empty(shape, dtype=_TORCH_DTYPES[t.dtype], device=self.device)
            binding.bind_output(t.name, kind, index, np.dtype(t.dtype).type, shape, out.data_ptr())
            outputs.append(out)
        if kind == "cuda":
            # NOTE: ORT runs on its own CUDA stream: inputs written on torch's stream (the crop) must be done.
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)  # returns once the outputs are written
        return outputs


def _as_numpy(x: torch.Tensor, spec: TensorSpec) -> np.ndarray:
    return x.detach().to("cpu", _TORCH_DTYPES[spec.dtype]).contiguous().numpy()


class OnnxRunner:
    """ONNX Runtime on the CPU or CUDA provider; a drop-in for ``TorchRunner``."""

    name = "onnx"

    def __init__(
        self,
        export_dir: str | Path,
        device: str | torch.device = "cpu",
        options: OrtOptions = OrtOptions(),
        bundle_sha256: str | None = None,
        expected: dict[str, GraphSpec] | None = None,
    ) -> None:
        """Verify ``export_dir`` (against ``bundle_sha256`` and the model's graph ``expected`` specs when given)
        and start both sessions. Raises ``ExportError`` for a corrupt or mismatched directory."""
        self.export_dir = Path(export_dir)
        self.manifest: ExportManifest = verify_export(self.export_dir, bundle_sha256, expected)
        requested = torch.device(device)
        want_cuda = requested.type == "cuda" and torch.cuda.is_available()
        if requested.type == "cuda" and not want_cuda:
            log.warning("ONNX runner: device %s asked for but torch sees no CUDA device; using the CPU", requested)
        sessions = {}
        for name, spec in self.manifest.graphs.items():
            path = self.export_dir / spec.file
            try:
                sessions[name] = create_session(path, options, want_cuda, requested.index or 0)
            except Exception as exc:  # an unloadable graph is a corrupt export
                raise ExportError(f"ONNX Runtime cannot load {path}: {exc}") from exc
            check_session(sessions[name], spec, path)
        on_cuda = all(s.get_providers()[0] == CUDA_PROVIDER for s in sessions.values())
        self.device = torch.device("cuda", requested.index or 0) if on_cuda else torch.device("cpu")
        self.providers = sessions["glance"].get_providers()
        bound = options.io_binding_on_cpu
        self._glance = _Graph(sessions["glance"], self.manifest.graphs["glance"], self.device, bound)
        self._focus = _Graph(sessions["focus"], self.manifest.graphs["focus"], self.device, bound)
        so = session_options(options)
        log.info(
            "ONNX runner on %s (%s%s): intra_op_threads=%d inter_op_threads=%d spinning=%s, export %s",
            self.device,
            self.providers[0],
            ", IOBinding" if self._glance.bound else "",
            so.intra_op_num_threads,
            so.inter_op_num_threads,
            "on" if options.allow_spinning else "off",
            self.export_dir,
        )

    @property
    def io_binding(self) -> bool:
        """Inputs and outputs bound by pointer (IOBinding) instead of copied through numpy."""
        return self._focus.bound

    @property
    def sessions(self) -> dict[str, ort.InferenceSession]:
        """The ONNX Runtime session of each stage (``glance``, ``focus``), e.g. to read their options."""
        return {"glance": self._glance.session, "focus": self._focus.session}

    def glance(self, frames_small: torch.Tensor) -> OnnxGlance:
        centres, logits, global_feats, pooled, step = self._glance.run(frames_small)
        return OnnxGlance(centres, logits, FocusState(global_feats, pooled, step))

    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        logits, pooled, step = self._focus.run(cubes, state.global_feats, state.pooled, state.step)
        return logits, FocusState(state.global_feats, pooled, step)
