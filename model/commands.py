"""Model subcommands of the ``adafocus`` CLI: ``cost``, ``info``, ``synth``, ``train``, ``calibrate``, ``evaluate``,
``diagnose``, ``ablation``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the handlers import lazily (``adafocus --help`` stays fast); these are for annotations only
    from model.adafocus import AdaFocusV3
    from model.budgets import BudgetTable
    from model.training.config import TrainConfig
    from model.training.train import TrainState

GENERATED_STAGES = "pretrain_local:300,policy:1500,deep_feature:300"
FOLDER_STAGES = "random:300,policy:1500,deep_feature:300"


def register(sub: Any) -> None:
    cost = sub.add_parser("cost", help="multiply-add accounting (GMACs) of a named config or a bundle")
    src = cost.add_mutually_exclusive_group()
    src.add_argument("--config", default=None, help="named config: tiny, default, paper-mn2-r50")
    src.add_argument("--bundle", default=None, help="bundle directory")
    cost.add_argument("--json", action="store_true", help="print the report as JSON")
    cost.set_defaults(handler=run_cost)

    info = sub.add_parser("info", help="bundle path, config, labels and budgets")
    info.add_argument("--bundle", default=None, help="bundle directory (default: the shipped bundle)")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(handler=run_info)

    synth = sub.add_parser("synth", help="write benchmark clips (fashion or synth) as H.264 MP4 files plus labels.csv")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--data", default="fashion", help="benchmark: fashion, synth (or a preset, e.g. synth:easy)")
    synth.add_argument("--preset", default=None, choices=("hard", "easy"), help="synth benchmark setting (hard)")
    synth.add_argument("--split", default="test", choices=("train", "calibration", "test"), help="fashion: images")
    synth.add_argument("--count", type=int, default=32, help="number of clips")
    synth.add_argument("--seed", type=int, default=2, help="stream seed (synth: train 0, calibration 1, test 2)")
    synth.add_argument("--fps", type=int, default=8)
    synth.add_argument(
        "--realistic", default=None, metavar="PRESET[,PRESET...]",
        help="the fashion scenes as realistic uploads instead (sizes, frame rates, codecs, GOPs of "
        "model/data/realistic.py; `all` for every preset): <out>/<preset>/clip_*.<ext> plus labels.csv each",
    )
    synth.set_defaults(handler=run_synth)

    train = sub.add_parser("train", help="train a model (staged recipe) and write a bundle")
    train.add_argument("--config", default="default", help="named architecture: tiny, default, paper-mn2-r50")
    _add_data_args(train)
    train.add_argument("--train-seed", type=int, default=0, help="synthetic stream of the training clips")
    train.add_argument(
        "--stages",
        default=None,
        help="comma list of stage:steps (stages: pretrain_glance and pretrain_local_still on stills of the fashion "
        "benchmark, pretrain_local on box-centred cubes of clips, pretrain_glance_clip, placement (f_G + policy on the "
        "hit-rate term alone), policy, deep_feature, pixel, "
        f"random, policy_only); "
        f"default {GENERATED_STAGES} on a generated benchmark, {FOLDER_STAGES} on class folders (no target "
        "locations there)",
    )
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument(
        "--lr-mult", default="policy=0.1", help="paper-stage lr multipliers, e.g. policy=0.1,classifier=2"
    )
    train.add_argument("--entropy-bonus", type=float, default=0.01)
    train.add_argument(
        "--policy-reward", default="marginal", choices=("marginal", "own"), help="policy-discovery reward per cube"
    )
    train.add_argument("--own-reward-weight", type=float, default=0.5, help="own-CE weight in the marginal reward")
    train.add_argument("--centred-fraction", type=float, default=0.25)
    train.add_argument(
        "--placement-weight", type=float, default=0.0,
        help="weight of the hit-rate term (heatmap mass on the product's cells; generated benchmarks only)",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=1, help="data worker processes")
    train.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    train.add_argument("--run-dir", default="runs/train", help="checkpoints and state (resumable)")
    train.add_argument("--resume", action="store_true", help="continue the checkpoint in --run-dir")
    train.add_argument(
        "--init-from", default=None, help="starting weights (a checkpoint.safetensors or weights.safetensors file)"
    )
    train.add_argument(
        "--backbone-weights", default=None, metavar="glance=PATH,local=PATH",
        help="torchvision-format state dicts (.pth or .safetensors, e.g. ImageNet MobileNetV2 / ResNet files) the "
        "encoders start from; strict, the classification head ignored",
    )
    train.add_argument("--checkpoint-every", type=int, default=50)
    train.add_argument("--out", required=True, help="bundle directory to write")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=run_train)

    cal = sub.add_parser("calibrate", help="solve budget threshold sets on the calibration split; card and Figure 6")
    cal.add_argument("--bundle", required=True, help="bundle directory (budgets.json and model_card.md rewritten)")
    _add_data_args(cal, default=None)
    cal.add_argument("--calib-seed", type=int, default=1)
    cal.add_argument("--calib-count", type=int, default=1024)
    cal.add_argument("--test-seed", type=int, default=2)
    cal.add_argument("--test-count", type=int, default=1024)
    cal.add_argument("--calib-data", default=None, help="class-folder calibration set (real data)")
    cal.add_argument("--test-data", default=None, help="class-folder test set (real data)")
    cal.add_argument(
        "--served-count", type=int, default=256,
        help="fashion: the first N test clips also written as MP4 and decoded as the server does (card's served-path "
        "table); 0: skip",
    )
    cal.add_argument("--criterion", default="entropy", choices=("entropy", "max_prob"))
    cal.add_argument("--default-level", default="balanced")
    cal.add_argument(
        "--min-gain",
        type=float,
        default=0.005,
        help="accuracy (0-1) a level must gain over the fixed-count mixing line on the calibration split "
        "(default 0.005: half a point; a tie is not worth a level)",
    )
    cal.add_argument("--batch-size", type=int, default=64)
    cal.add_argument("--workers", type=int, default=1)
    cal.add_argument("--threads", type=int, default=1)
    cal.add_argument("--device", default="cpu")
    cal.add_argument("--plot", default=None, help="PNG path (default: <bundle>/figure6.png)")
    cal.add_argument("--report", default=None, help="also write the test-split evaluation report (JSON) here")
    cal.set_defaults(handler=run_calibrate)

    ev = sub.add_parser("evaluate", help="evaluate a bundle on fresh clips of a benchmark with the staged API")
    ev.add_argument("--bundle", default=None, help="bundle directory (default: the shipped bundle)")
    _add_data_args(ev, default=None)
    ev.add_argument("--split", default="test", choices=("train", "calibration", "test"), help="which images")
    ev.add_argument("--seed", type=int, required=True, help="stream seed (pick one no training run used)")
    ev.add_argument("--count", type=int, default=1024, help="number of clips")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--workers", type=int, default=1)
    ev.add_argument("--threads", type=int, default=1)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--json", action="store_true", help="print the whole report as JSON")
    ev.set_defaults(handler=run_evaluate)

    dg = sub.add_parser(
        "diagnose", help="per clip kind: placement (hits, IoU, distractors) vs the local encoder (fashion benchmark)"
    )
    dg.add_argument("--bundle", default=None, help="bundle directory (default: the shipped bundle)")
    dg.add_argument("--split", default="test", choices=("train", "calibration", "test"))
    dg.add_argument("--seed", type=int, required=True, help="stream seed (pick one no training run used)")
    dg.add_argument("--count", type=int, default=512)
    dg.add_argument("--batch-size", type=int, default=64)
    dg.add_argument("--threads", type=int, default=1)
    dg.add_argument("--json", action="store_true", help="print the report as JSON")
    dg.set_defaults(handler=run_diagnose)

    ab = sub.add_parser("ablation", help="the paper's ablation table from the reports `make ablation` wrote")
    ab.add_argument("--runs", default="runs/ablation", help="folder of <objective>-seed<N>/eval.json (runs/ablation)")
    ab.set_defaults(handler=run_ablation)


def _add_data_args(parser: Any, default: str | None = "fashion") -> None:
    parser.add_argument(
        "--data",
        default=default,
        help="a generated benchmark (fashion, synth) or a folder of class folders root/<class>/<video>"
        + ("" if default else "; default: the benchmark the bundle was trained on"),
    )
    parser.add_argument("--preset", default=None, choices=("hard", "easy"), help="synth benchmark setting (hard)")


def _is_benchmark(data: str) -> bool:
    """``--data`` names a generated benchmark (not a class-folder root)."""
    from model.data.datasets import BENCHMARKS

    return data.split(":")[0] in BENCHMARKS


def run_cost(args: argparse.Namespace) -> int:
    from model.adafocus import AdaFocusV3
    from model.bundle import load_bundle
    from model.config import get_config
    from model.macs import cost_report

    model = load_bundle(args.bundle).model if args.bundle else AdaFocusV3(get_config(args.config or "default"))
    report = cost_report(model).to_dict()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for key, value in report.items():
        if isinstance(value, list):
            value = ", ".join(f"{v:.4f}" for v in value)
        elif isinstance(value, float):
            value = f"{value:.4f}"
        sys.stdout.write(f"{key:34s} {value}\n")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from model.bundle import load_bundle

    info = load_bundle(args.bundle).info()
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(f"bundle  {info['path']}\nsha256  {info['sha256']}\nconfig  {info['config']['name']}\n")
    sys.stdout.write(f"labels  {', '.join(info['labels'])}\n")
    for level in info["budgets"]["levels"]:
        sys.stdout.write(
            f"budget  {level['name']:10s} {level['expected_gmacs']:.4f} GMACs/video  "
            f"acc {level['expected_accuracy']:.3f}\n"
        )
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from model.data import fashion, synth
    from model.data.datasets import PRESETS, preset_name

    name = preset_name(args.data, args.preset)
    cfg = PRESETS[name]
    if args.realistic:
        return _write_realistic(args, cfg)
    if isinstance(cfg, fashion.FashionConfig):
        labels = fashion.write_dataset(Path(args.out), cfg, args.count, args.split, args.seed, fps=args.fps)
    else:
        labels = synth.write_dataset(Path(args.out), cfg, args.count, args.seed, fps=args.fps)
    sys.stdout.write(f"wrote {args.count} `{name}` clips and {labels}\n")
    return 0


def _write_realistic(args: argparse.Namespace, cfg: Any) -> int:
    from model.data import realistic
    from model.data.fashion import FashionConfig

    if not isinstance(cfg, FashionConfig):
        sys.stderr.write("--realistic renders the fashion benchmark's scenes: use --data fashion\n")
        return 2
    try:
        presets = realistic.parse_presets(args.realistic)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    labels = realistic.write_realistic(Path(args.out), presets, args.count, args.seed, args.split, cfg)
    sys.stdout.write(f"wrote {args.count} clips per preset: {', '.join(str(p) for p in labels)}\n")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The full command, every option spelled out, so that the model card reproduces it even if defaults change."""
    import shlex

    parts = ["adafocus", args.command]
    for key, value in vars(args).items():
        if key in ("command", "handler", "log_level") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, shlex.quote(str(value))]
    return " ".join(parts)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from model.bundle import save_bundle
    from model.pretrained import BackboneWeightsError
    from model.training.train import train

    torch.set_num_threads(args.threads)
    if args.init_from and args.backbone_weights:
        sys.stderr.write("adafocus train: give --init-from or --backbone-weights, not both\n")
        return 2
    try:
        cfg, benchmark = _train_config(args)
        init_from = Path(args.init_from) if args.init_from else None
        model, state = train(
            cfg, Path(args.run_dir), resume=args.resume, progress=not args.no_progress, init_from=init_from
        )
    except BackboneWeightsError as exc:
        sys.stderr.write(f"adafocus train: {exc}\n")
        return 2
    model.cpu()
    budgets, card = _uncalibrated_budgets_and_card(args, cfg, model, state)
    out = save_bundle(args.out, model, budgets, card, benchmark=benchmark)
    sys.stdout.write(f"wrote bundle {out} after {state.seconds / 60:.1f} min of training\n")
    return 0


def _train_config(args: argparse.Namespace) -> tuple[TrainConfig, str | None]:
    """The run's ``TrainConfig`` from the ``train`` flags, labels taken from the data; and the benchmark's preset
    name (None for class folders)."""
    from model.config import get_config
    from model.data.datasets import DataSpec, VideoFolderDataset, generated_spec, preset_name
    from model.pretrained import parse_backbone_weights
    from model.training.config import TrainConfig

    model_cfg = get_config(args.config)
    generated = _is_benchmark(args.data)
    stages_arg = args.stages or (GENERATED_STAGES if generated else FOLDER_STAGES)
    stages = tuple((name, int(steps)) for name, steps in (item.split(":") for item in stages_arg.split(",")))
    total_steps = sum(steps for _, steps in stages)
    benchmark = None
    if generated:
        benchmark = preset_name(args.data, args.preset)
        data = generated_spec(benchmark, "train", args.train_seed, total_steps * args.batch_size)
        model_cfg = model_cfg.replace(num_classes=len(data.benchmark.class_names), labels=data.benchmark.class_names)
    else:
        data = DataSpec(args.data)
        names = VideoFolderDataset(args.data, model_cfg.num_frames, model_cfg.frame_size).class_names
        model_cfg = model_cfg.replace(num_classes=len(names), labels=names)
    lr_mult = tuple((k, float(v)) for k, v in (item.split("=") for item in args.lr_mult.split(",") if item))
    cfg = TrainConfig(
        model=model_cfg,
        data=data,
        stages=stages,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        lr_mult=lr_mult,
        entropy_bonus=args.entropy_bonus,
        policy_reward=args.policy_reward,
        own_reward_weight=args.own_reward_weight,
        centred_fraction=args.centred_fraction,
        placement_weight=args.placement_weight,
        backbone_weights=parse_backbone_weights(args.backbone_weights) if args.backbone_weights else (),
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
    )
    return cfg, benchmark


def _uncalibrated_budgets_and_card(
    args: argparse.Namespace, cfg: TrainConfig, model: AdaFocusV3, state: TrainState
) -> tuple[BudgetTable, str]:
    """A freshly trained bundle's provisional budget table and model card, until ``adafocus calibrate`` solves the
    real ones: one level, every video takes all K cubes."""
    from model.budgets import BudgetLevel, BudgetTable
    from model.macs import cost_report
    from model.training.train import training_section

    cost = cost_report(model)
    budgets = BudgetTable(
        criterion="entropy",
        levels=(BudgetLevel("max", (0.0,) * (cfg.model.num_cubes + 1), cost.exit_gmacs[-1], 0.0),),
        default="max",
    )
    cost_line = ", ".join(f"exit {k}: {g * 1000:.1f} MMACs" for k, g in enumerate(cost.exit_gmacs))
    card = (
        f"# AdaFocusV3 `{cfg.model.name}` bundle\n\n"
        "Not calibrated yet: run `adafocus calibrate --bundle <this dir>`.\n\n"
        + training_section(cfg, state, _command_line(args), cost_line)
    )
    return budgets, card


def run_calibrate(args: argparse.Namespace) -> int:
    from model.evaluation.calibrate import calibrate_command

    return calibrate_command(args, _command_line(args))


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from model.bundle import load_bundle
    from model.data.datasets import DataSpec, build_dataset, generated_spec, preset_name
    from model.evaluation.report import evaluation_report, targets_summary
    from model.macs import cost_report

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    cfg = bundle.config
    exit_gmacs = cost_report(bundle.model).exit_gmacs
    if args.data and not _is_benchmark(args.data):
        dataset = build_dataset(DataSpec(args.data), cfg.num_frames, cfg.frame_size, cfg.class_names)
        desc = f"class folders under `{args.data}`"
    else:
        benchmark = preset_name(args.data, args.preset) if args.data else bundle.benchmark
        if benchmark is None:
            raise SystemExit("the bundle names no benchmark it was trained on: pass --data")
        spec = generated_spec(benchmark, args.split, args.seed, args.count)
        dataset = build_dataset(spec, cfg.num_frames, cfg.frame_size, cfg.class_names)
        desc = f"`{benchmark}` {args.split} stream seed {args.seed}, {args.count} clips"
    model = bundle.model.to(args.device)
    report = evaluation_report(model, bundle.budgets, exit_gmacs, dataset, desc, args.batch_size, args.workers)
    report["bundle"] = {"path": str(bundle.path), "sha256": bundle.sha256}
    report["targets"] = targets_summary(report)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(f"{desc}\nexit  MMACs  acc(policy)  acc(random centres)\n")
    for e in report["exits"]:
        sys.stdout.write(f"{e['k']:4d}  {e['gmacs'] * 1e3:5.1f}  {e['accuracy']:.3f}        ")
        sys.stdout.write(f"{e['accuracy_random_centres']:.3f}\n")
    for lvl in report["levels"]:
        sys.stdout.write(
            f"level {lvl['name']:9s} {lvl['gmacs'] * 1e3:6.2f} MMACs acc {lvl['accuracy']:.3f}  fixed mix "
            f"{lvl['fixed_mix_accuracy']:.3f}  random exits {lvl['random_exit_accuracy']:.3f}\n"
        )
    sys.stdout.write(f"distinct cube frames per clip: {report['distinct_cube_frames_mean']:.2f}\n")
    return 0


def run_diagnose(args: argparse.Namespace) -> int:
    import torch

    from model.bundle import load_bundle
    from model.data.datasets import PRESETS, build_dataset, generated_spec
    from model.data.fashion import FashionConfig
    from model.data.scene_facts import stream_facts
    from model.evaluation.kinds import kind_report, record_kinds, render_kinds

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    benchmark = bundle.benchmark or ""
    bench = PRESETS.get(benchmark)
    if not isinstance(bench, FashionConfig):
        sys.stderr.write(f"diagnose needs a bundle of the fashion benchmark (this one: {benchmark or 'none'})\n")
        return 2
    spec = generated_spec(benchmark, args.split, args.seed, args.count)
    dataset = build_dataset(spec, bundle.config.num_frames, bundle.config.frame_size, bundle.config.class_names)
    kinds, distractors = stream_facts(bench, args.split, args.seed, args.count)
    record = record_kinds(bundle.model, dataset, args.batch_size)
    report = kind_report(record, kinds, bundle.model.cube_shape, distractors)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(f"`{benchmark}` {args.split} stream seed {args.seed}, {args.count} clips\n{render_kinds(report)}")
    return 0


def run_ablation(args: argparse.Namespace) -> int:
    from model.evaluation.ablation import ablation_table, load_rows

    rows = load_rows(Path(args.runs))
    if not rows:
        sys.stderr.write(f"no <objective>-seed<N>/eval.json under {args.runs} (run `make ablation` first)\n")
        return 2
    sys.stdout.write(ablation_table(rows))
    return 0
