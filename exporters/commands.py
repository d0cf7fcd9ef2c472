"""Exporter subcommands of the ``adafocus`` CLI: ``export onnx``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    export = sub.add_parser("export", help="export the model's stages for other runtimes")
    targets = export.add_subparsers(dest="target", required=True, metavar="TARGET")
    onnx = targets.add_parser("onnx", help="glance and focus graphs as ONNX, checked against PyTorch")
    onnx.add_argument("--bundle", default=None, help="bundle directory (default: the shipped bundle)")
    onnx.add_argument("--out", required=True, help="export directory (created; an earlier export is replaced)")
    onnx.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    onnx.add_argument(
        "--exporter",
        choices=("auto", "torchscript", "dynamo"),
        default="auto",
        help="torch.onnx exporter; auto tries the fast legacy one first, then dynamo",
    )
    onnx.add_argument("--clips", type=int, default=16, help="synthetic clips for the parity check (default 16)")
    onnx.set_defaults(handler=run_export_onnx)


def run_export_onnx(args: argparse.Namespace) -> int:
    from exporters.manifest import ExportError
    from exporters.onnx_export import ExportOptions, export_bundle
    from model.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(args.bundle)
        manifest, report = export_bundle(bundle, args.out, ExportOptions(args.opset, args.exporter), args.clips)
    except (BundleError, ExportError) as exc:
        sys.stderr.write(f"adafocus export onnx: {exc}\n")
        return 2
    out = Path(args.out)
    sys.stdout.write(f"exported bundle {manifest.bundle_sha256[:12]}... ({manifest.config_name}) to {out}\n")
    sys.stdout.write(f"exporter {manifest.exporter}, opset {manifest.opset}\n")
    for graph in manifest.graphs.values():
        size = (out / graph.file).stat().st_size / 1e6
        ins = ", ".join(f"{t.name}{list(t.shape)}" for t in graph.inputs)
        sys.stdout.write(f"  {graph.file:12s} {size:7.2f} MB  ({ins})\n")
    worst = max({**report["random"], **report["real"]}.values())
    sys.stdout.write(
        f"parity: max abs diff {worst:.3g} (tolerance {report['tolerance']:g}) on {report['clips']} clips\n"
    )
    for level, decision in report["decisions"].items():
        same = decision["labels_identical"] and decision["exit_steps_identical"]
        sys.stdout.write(
            f"  budget {level:10s} labels+exit steps {'identical' if same else 'DIFFER'}"
            f" (exit steps {decision['exit_step_counts']})\n"
        )
    if not report["passed"]:
        sys.stdout.write("PARITY FAILED:\n" + "".join(f"  {f}\n" for f in report["failures"]))
        return 1
    sys.stdout.write(f"parity passed; report in {out / 'parity_report.json'}\n")
    return 0
