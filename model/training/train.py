"""``adafocus train``: the staged training recipe for AdaFocusV3, resumable, on CPU or CUDA.

Stages (run in the order given; each has its own AdamW optimiser and cosine schedule):
- ``pretrain_local``: f_L + its auxiliary head on cubes centred on the synthetic target (ground truth from the
  generator; the policy never sees it). Stands in for the ImageNet pretraining of the paper's backbones.
- ``policy``: policy discovery (not in the paper). Cube cells are sampled from the heatmap policy's categoricals
  over (t, y, x) cells (with ``distinct_frames`` placement, cube k's categorical excludes the frames cubes
  1..k-1 took); REINFORCE with a batch-mean baseline per cube and an entropy bonus. The reward of cube k is
  ``marginal``: how much it lowered f_C's CE (CE at exit k-1 minus CE at exit k), so that a cube that repeats
  what earlier cubes saw earns nothing, plus ``own_reward_weight`` x (-CE of the cube-only auxiliary head); or
  ``own``: the auxiliary CE alone (the earlier recipe, whose cubes became copies of each other).
  f_G learns through the policy's log-probabilities; f_L and f_C train on the sampled cubes.
- ``deep_feature``: the paper's objective. Two branches per step, the policy's centres cropped with the
  deep-feature gradient (Eq. 5-6) and uniform random centres (part of them on the target when known); loss =
  mean over branches of (sum of CE over every exit, Eq. 1) + CE of the global and local auxiliary heads.
- ``pixel``: the same objective with the paper's pixel-interpolation gradient (Eq. 2-4) instead of Eq. 5-6: the
  cube is bilinearly sampled from the frames at continuous coordinates (an ablation).
- ``random`` / ``policy_only``: the paper's optional two-stage mode (Appendix C): encoders + classifier with a
  random policy first, then the policy alone with the deep-feature gradient.
Per-module learning-rate multipliers (``lr_mult``) apply in the paper stages.

Checkpoints (``run_dir``): ``checkpoint.safetensors`` (weights), ``optimizer.pt`` (optimizer state, loaded with
``weights_only=True``) and ``state.json`` (stage, step, history). ``--resume`` continues where it stopped.
The result is written as a model bundle; ``adafocus calibrate`` then solves its budgets and model card.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from model.adafocus import AdaFocusV3
from model.data.datasets import Sample, batch_plan, build_dataset, iterate
from model.data.fashion import FashionConfig
from model.data.stills import StillDataset
from model.pretrained import load_backbone_weights
from model.training.config import STILL_STAGES, TrainConfig
from model.training.objectives import PAPER_STAGES, STAGE_MODULES, STEP_FNS

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    stage: int = 0  # index into TrainConfig.stages
    step: int = 0  # steps done in that stage
    history: list[dict[str, Any]] = field(default_factory=list)  # one summary per finished stage
    seconds: float = 0.0  # training wall-clock so far

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_optimizer(model: AdaFocusV3, cfg: TrainConfig, stage: str) -> torch.optim.Optimizer:
    mult = dict(cfg.lr_mult) if stage in PAPER_STAGES else {}
    groups = []
    for name in STAGE_MODULES[stage]:
        params = [p for p in getattr(model, name).parameters()]
        lr = cfg.lr * mult.get(name, 1.0)
        groups.append({"params": params, "lr": lr, "base_lr": lr, "name": name})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero over the stage."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# ------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(
    run_dir: Path, model: AdaFocusV3, opt: torch.optim.Optimizer, state: TrainState, cfg: TrainConfig
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(run_dir / "checkpoint.safetensors.tmp"))
    torch.save(opt.state_dict(), run_dir / "optimizer.pt.tmp")
    (run_dir / "state.json.tmp").write_text(json.dumps({"state": state.to_dict(), "config": cfg.to_dict()}, indent=2))
    for name in ("checkpoint.safetensors", "optimizer.pt", "state.json"):
        (run_dir / f"{name}.tmp").replace(run_dir / name)


def load_checkpoint(run_dir: Path, model: AdaFocusV3) -> tuple[TrainState, dict[str, Any] | None]:
    """Weights into ``model``; returns the saved state and optimizer state (None when there is no checkpoint)."""
    if not (run_dir / "state.json").is_file():
        return TrainState(), None
    saved = json.loads((run_dir / "state.json").read_text())
    model.load_state_dict(load_file(str(run_dir / "checkpoint.safetensors")))
    opt_state = torch.load(run_dir / "optimizer.pt", weights_only=True)
    return TrainState(**saved["state"]), opt_state


# ------------------------------------------------------------------------------------------------ loop
def train(
    cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True, init_from: Path | None = None
) -> tuple[AdaFocusV3, TrainState]:
    """Run every stage (continuing a checkpoint in ``run_dir`` if ``resume``); returns the trained model.

    ``init_from`` (a run directory's ``checkpoint.safetensors`` or a bundle's ``weights.safetensors``) gives the
    starting weights of a fresh run, e.g. ablations that all start from one pretrained checkpoint;
    ``cfg.backbone_weights`` (torchvision-format state dicts) the encoders' starting weights."""
    device = torch.device(cfg.device)
    model, state, opt_state = start(cfg, run_dir, resume, init_from)
    model.to(device).train()
    cache: dict[str, Dataset[Sample]] = {}
    while state.stage < len(cfg.stages):
        stage, total = cfg.stages[state.stage]
        data = stage_data(cfg, stage, cache)
        length = len(data)  # type: ignore[arg-type]
        opt = make_optimizer(model, cfg, stage)
        if opt_state is not None and state.step > 0:
            # mid-stage: the saved moments; at a stage's first step a fresh optimizer is the saved one, and a run
            # whose stage list grew after it finished has saved the last old stage's parameter groups
            opt.load_state_dict(opt_state)
        opt_state = None
        # step s of stage i always sees the same clips and random draws, resumed or not
        offset = sum(steps for _, steps in cfg.stages[: state.stage])
        plan = batch_plan(
            length, cfg.batch_size, offset + state.step, total - state.step, cfg.seed, cfg.data.is_generated
        )
        bar = tqdm(total=total, initial=state.step, desc=stage, disable=not progress, dynamic_ncols=True)
        before, first_step = state.seconds, state.step
        summary = _run_stage(model, cfg, stage, state, opt, iterate(data, plan, cfg.workers), device, bar, run_dir)
        bar.close()
        # seconds per step of this process's part of the stage (a resumed stage: the steps after the resume)
        rate = (state.seconds - before) / max(total - first_step, 1)
        state.history.append({"stage": stage, "steps": total, **summary, "seconds_per_step": rate})
        state.stage, state.step = state.stage + 1, 0
        save_checkpoint(
            run_dir, model, make_optimizer(model, cfg, cfg.stages[min(state.stage, len(cfg.stages) - 1)][0]), state, cfg
        )
    model.eval()
    return model, state


def start(
    cfg: TrainConfig, run_dir: Path, resume: bool, init_from: Path | None
) -> tuple[AdaFocusV3, TrainState, dict[str, Any] | None]:
    """The model a run starts from (a checkpoint to resume, ``init_from``'s weights, the backbone weights, or a
    fresh seeded init), its state and the optimizer state to restore (None unless resumed)."""
    if init_from is not None and cfg.backbone_weights:
        raise ValueError("give either starting weights (init_from) or backbone weights, not both")
    torch.manual_seed(cfg.seed)
    model = AdaFocusV3(cfg.model)
    state, opt_state = load_checkpoint(run_dir, model) if resume else (TrainState(), None)
    if init_from is not None and opt_state is None:
        model.load_state_dict(load_file(str(init_from)))
    if cfg.backbone_weights and opt_state is None:
        load_backbone_weights(model, cfg.backbone_weights)
    return model, state, opt_state


def stage_data(cfg: TrainConfig, stage: str, cache: dict[str, Dataset[Sample]]) -> Dataset[Sample]:
    """The stage's data: stills of the benchmark's train images for ``STILL_STAGES``, else the run's clips."""
    key = "stills" if stage in STILL_STAGES else "clips"
    if key not in cache:
        if key == "stills":
            bench = cfg.data.benchmark
            assert isinstance(bench, FashionConfig)  # TrainConfig checked it
            cache[key] = StillDataset(bench, cfg.data.split, cfg.data.seed, cfg.data.count)
        else:
            cache[key] = build_dataset(cfg.data, cfg.model.num_frames, cfg.model.frame_size, cfg.model.labels or None)
    return cache[key]


def _run_stage(
    model: AdaFocusV3,
    cfg: TrainConfig,
    stage: str,
    state: TrainState,
    opt: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, ...]],
    device: torch.device,
    bar: Any,
    run_dir: Path,
) -> dict[str, float]:
    step_fn = STEP_FNS[stage]
    total = cfg.stages[state.stage][1]
    ema_loss, ema_acc = float("nan"), float("nan")
    extra_ema: dict[str, float] = {}
    started = time.monotonic()
    for batch in batches:
        batch = tuple(t.to(device, non_blocking=True) for t in batch)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.stage * 100_003 + state.step)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(state.step, total, cfg.warmup_steps)
        result = step_fn(model, cfg, batch, gen)
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        opt.step()
        loss, acc = result.loss.item(), result.correct.float().mean().item()
        ema_loss = loss if math.isnan(ema_loss) else 0.95 * ema_loss + 0.05 * loss
        ema_acc = acc if math.isnan(ema_acc) else 0.95 * ema_acc + 0.05 * acc
        for k, v in result.extra.items():
            extra_ema[k] = v if k not in extra_ema else 0.95 * extra_ema[k] + 0.05 * v
        state.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.3f}", **{k: f"{v:.3f}" for k, v in extra_ema.items()})
        if state.step % cfg.checkpoint_every == 0:
            state.seconds += time.monotonic() - started
            started = time.monotonic()
            save_checkpoint(run_dir, model, opt, state, cfg)
            log.info("%s step %d/%d loss %.4f acc %.3f %s", stage, state.step, total, ema_loss, ema_acc, extra_ema)
    state.seconds += time.monotonic() - started
    return {"final_loss_ema": ema_loss, "final_acc_ema": ema_acc, **{f"final_{k}_ema": v for k, v in extra_ema.items()}}


def training_section(cfg: TrainConfig, state: TrainState, command: str, cost_line: str) -> str:
    """The model card's training part: data, stages actually run, wall-clock, reproduce command."""
    data = (
        f"`{cfg.data.source}` benchmark (`model/data/{cfg.data.source}.py`), {cfg.data.split} stream seed "
        f"{cfg.data.seed}, {cfg.data.count} clips generated on the fly; {cfg.data.benchmark}"
        if cfg.data.is_generated
        else f"class folders under `{cfg.data.source}`"
    )
    rows = "\n".join(
        f"| {h['stage']} | {h['steps']} | {h.get('final_loss_ema', float('nan')):.3f} | "
        f"{h.get('final_acc_ema', float('nan')):.3f} |"
        for h in state.history
    )
    mult = ", ".join(f"{k} x{v}" for k, v in cfg.lr_mult) or "none"
    start = "".join(
        f"- Encoder start: {name} from `{path}` (torchvision format)\n" for name, path in cfg.backbone_weights
    )
    return (
        f"## Training\n\n"
        f"- Data: {data}\n"
        f"- Stages, in order (batch {cfg.batch_size}, AdamW lr {cfg.lr}, weight decay {cfg.weight_decay}, "
        f"warm-up {cfg.warmup_steps} steps then cosine per stage; lr multipliers in the paper stages: {mult}; "
        f"entropy bonus {cfg.entropy_bonus}; policy reward {cfg.policy_reward} (own-CE weight "
        f"{cfg.own_reward_weight}); {cfg.centred_fraction:.0%} of random-branch cubes on the target; hit-rate term "
        f"weight {cfg.placement_weight}):\n\n"
        f"| stage | steps | final loss (EMA) | final train acc (EMA) |\n|---|---|---|---|\n{rows}\n\n"
        f"{start}"
        f"- Wall-clock: {state.seconds / 60:.1f} min on `{cfg.device}`.\n"
        f"- Cost: {cost_line}\n"
        f"- Command:\n\n```\n{command}\n```\n"
    )
