"""``adafocus train``: the staged training recipe for AdaFocusV3, resumable, on CPU or CUDA.

Stages (run in the order given; each has its own AdamW optimiser and cosine schedule):
- ``pretrain_local``: f_L + its auxiliary head on cubes centred on the synthetic target (ground truth from the
  generator; the policy never sees it). Stands in for the ImageNet pretraining of the paper's backbones.
- ``policy``: policy discovery. Cube cells are sampled from the heatmap policy's categorical over (t, y, x)
  cells; REINFORCE with reward = -CE of the cube-only auxiliary head, a batch-mean baseline per cube and an
  entropy bonus. f_G learns through the policy's log-probabilities; f_L and f_C train on the sampled cubes.
- ``deep_feature``: the paper's objective. Two branches per step, the policy's centres cropped with the
  deep-feature gradient (Eq. 5-6) and uniform random centres (part of them on the target when known); loss =
  mean over branches of (sum of CE over every exit, Eq. 1) + CE of the global and local auxiliary heads.
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
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model.adafocus import AdaFocusV3, FocusState, GlanceOutput
from model.config import AdaFocusConfig
from model.data import DataSpec, Sample, batch_plan, build_dataset, iterate
from model.synth import SynthConfig

log = logging.getLogger(__name__)

STAGES = ("pretrain_local", "policy", "deep_feature", "random", "policy_only")
NEEDS_TARGETS = ("pretrain_local",)
MODULES = ("global_encoder", "local_encoder", "policy", "classifier", "global_aux", "local_aux")


@dataclass(frozen=True)
class TrainConfig:
    model: AdaFocusConfig
    data: DataSpec
    stages: tuple[tuple[str, int], ...] = (("pretrain_local", 300), ("policy", 600), ("deep_feature", 300))
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_mult: tuple[tuple[str, float], ...] = (("policy", 0.1),)  # paper stages only; module -> multiplier
    warmup_steps: int = 20
    entropy_bonus: float = 0.01
    centred_fraction: float = 0.25  # share of random-branch cubes put on the target (synthetic data only)
    jitter: int = 4  # pixels of random offset of a target-centred cube
    seed: int = 0
    workers: int = 1
    device: str = "cpu"
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name, steps in self.stages:
            if name not in STAGES:
                raise ValueError(f"unknown stage {name!r}; choose from {STAGES}")
            if steps < 0:
                raise ValueError(f"stage {name} has negative steps")
            if name in NEEDS_TARGETS and not self.data.is_synth:
                raise ValueError(f"stage {name} needs target locations: synthetic data only")
        for name, _ in self.lr_mult:
            if name not in MODULES:
                raise ValueError(f"unknown module {name!r} in lr_mult; choose from {MODULES}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = self.model.name
        return out


@dataclass
class TrainState:
    stage: int = 0  # index into TrainConfig.stages
    step: int = 0  # steps done in that stage
    history: list[dict[str, Any]] = field(default_factory=list)  # one summary per finished stage
    seconds: float = 0.0  # training wall-clock so far

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ building blocks
def run_glance(model: AdaFocusV3, frames: torch.Tensor, policy_trains_glance: bool) -> GlanceOutput:
    """``model.glance`` on full-resolution frames, optionally letting the policy's gradient reach f_G."""
    if not policy_trains_glance:
        return model.glance(model.glance_input(frames))
    maps = model.encode_frames(model.global_encoder, model.normalize(model.glance_input(frames)))  # (B, Cg, T, h, w)
    global_feats = maps.mean(dim=(2, 3, 4))  # (B, Cg)
    policy_logits = model.policy(maps)  # (B, K, T, hg, wg): not detached
    step = torch.zeros(global_feats.shape[0], dtype=torch.long, device=frames.device)  # (B,)
    logits, pooled = model.classifier(global_feats, None, None, step)
    centres = model.heatmap_centres(policy_logits)  # (B, K, 3)
    return GlanceOutput(global_feats, centres, logits, FocusState(global_feats, pooled, step), policy_logits)


def branch(
    model: AdaFocusV3, frames: torch.Tensor, glance: GlanceOutput, centres: torch.Tensor, crop_mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every exit after a shared glance: exit logits (B, K+1, C) and local aux logits (B, K, C)."""
    feats = model.cube_features(frames, centres, crop_mode)  # type: ignore[arg-type]  # (B, K, Cl)
    logits, pooled, step = [glance.logits], glance.state.pooled, glance.state.step
    for k in range(model.config.num_cubes):
        step = step + 1
        step_logits, pooled = model.classifier(glance.global_feats, feats[:, k], pooled, step)
        logits.append(step_logits)
    return torch.stack(logits, dim=1), model.local_aux(feats)


def exit_loss(
    exit_logits: torch.Tensor, local_aux: torch.Tensor, global_aux: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Sum of CE over all exits (paper Eq. 1) + CE of the global and local auxiliary heads."""
    B, E, C = exit_logits.shape
    K = local_aux.shape[1]
    ce_exits = F.cross_entropy(exit_logits.reshape(B * E, C), y.repeat_interleave(E)) * E
    ce_local = F.cross_entropy(local_aux.reshape(B * K, C), y.repeat_interleave(K))
    return ce_exits + F.cross_entropy(global_aux, y) + ce_local


def centred_centres(model: AdaFocusV3, targets: torch.Tensor, jitter: int, gen: torch.Generator) -> torch.Tensor:
    """Centres (B, 3) of cubes that cover the target in one of its visible frames, jittered by +-``jitter`` px."""
    T, H, W = model.video_shape
    t, h, w = model.cube_shape
    tx, ty, tt, size, vis = (targets[:, i].float() for i in range(5))  # each (B,)
    B = targets.shape[0]
    noise = (torch.rand(B, 3, generator=gen) * 2 - 1).to(targets.device)  # (B, 3)
    x0 = tx + size / 2 - w / 2 + noise[:, 0] * jitter
    y0 = ty + size / 2 - h / 2 + noise[:, 1] * jitter
    t0 = tt + (noise[:, 2] + 1) / 2 * (vis - t).clamp(min=0)
    room = torch.tensor([max(W - w, 1), max(H - h, 1), max(T - t, 1)], device=targets.device, dtype=torch.float32)
    return (torch.stack([x0, y0, t0], dim=1) / room).clamp(0, 1)  # (B, 3)


def random_centres(
    model: AdaFocusV3, targets: torch.Tensor, fraction: float, jitter: int, gen: torch.Generator
) -> torch.Tensor:
    """Uniform random centres (B, K, 3); with known targets, ``fraction`` of the cubes sit on the target."""
    B, K = targets.shape[0], model.config.num_cubes
    centres = torch.rand(B, K, 3, generator=gen).to(targets.device)  # (B, K, 3)
    if fraction > 0 and bool((targets[:, 0] >= 0).all()):
        on = (torch.rand(B, K, generator=gen) < fraction).to(targets.device)  # (B, K)
        for k in range(K):
            centred = centred_centres(model, targets, jitter, gen)  # (B, 3)
            centres[:, k] = torch.where(on[:, k : k + 1], centred, centres[:, k])
    return centres


def sample_cells(
    model: AdaFocusV3, policy_logits: torch.Tensor, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, ...]:
    """Sample one cell per cube from the heatmaps (B, K, T, hg, wg).

    Returns centres (B, K, 3), log-probabilities (B, K) and entropies (B, K) of the categoricals.
    """
    B, K, Tg, hg, wg = policy_logits.shape
    log_p = policy_logits.flatten(2).log_softmax(-1)  # (B, K, N)
    probs = log_p.exp()
    flat = probs.detach().reshape(B * K, -1).cpu()  # sampled on CPU so that a CPU generator fixes the draw
    idx = torch.multinomial(flat, 1, generator=gen).view(B, K).to(policy_logits.device)  # (B, K)
    gx, gy, gt = model.cell_centres((Tg, hg, wg), policy_logits)
    ti, yi, xi = idx // (hg * wg), (idx // wg) % hg, idx % wg
    centres = torch.stack([gx[xi], gy[yi], gt[ti]], dim=-1)  # (B, K, 3)
    chosen = log_p.gather(-1, idx.unsqueeze(-1)).squeeze(-1)  # (B, K)
    entropy = -(probs * log_p).sum(-1)  # (B, K)
    return centres, chosen, entropy


# ------------------------------------------------------------------------------------------------ stages
@dataclass
class StepResult:
    loss: torch.Tensor
    correct: torch.Tensor  # (B,) bool, exit-K (or aux) correctness of the main branch
    extra: dict[str, float] = field(default_factory=dict)


def step_pretrain_local(
    model: AdaFocusV3, cfg: TrainConfig, batch: tuple[torch.Tensor, ...], gen: torch.Generator
) -> StepResult:
    frames, y, targets = batch
    centres = centred_centres(model, targets, cfg.jitter, gen)  # (B, 3)
    cube = model.normalize(model.crop_cubes(frames, centres))  # (B, 3, t, h, w)
    feats = model.encode_frames(model.local_encoder, cube).mean(dim=(2, 3, 4))  # (B, Cl)
    logits = model.local_aux(feats)
    return StepResult(F.cross_entropy(logits, y), logits.argmax(-1) == y)


def step_policy(
    model: AdaFocusV3, cfg: TrainConfig, batch: tuple[torch.Tensor, ...], gen: torch.Generator
) -> StepResult:
    frames, y, targets = batch
    glance = run_glance(model, frames, policy_trains_glance=True)
    centres, log_p, entropy = sample_cells(model, glance.policy_logits, gen)  # (B, K, 3), (B, K), (B, K)
    exit_logits, local_aux = branch(model, frames, glance, centres.detach(), "random")
    K = local_aux.shape[1]
    with torch.no_grad():
        reward = -F.cross_entropy(local_aux.flatten(0, 1), y.repeat_interleave(K), reduction="none").view(-1, K)
        advantage = reward - reward.mean(dim=0, keepdim=True)  # (B, K) batch-mean baseline per cube
    pg = -(advantage * log_p).mean() - cfg.entropy_bonus * entropy.mean()
    loss = exit_loss(exit_logits, local_aux, model.global_aux(glance.global_feats), y) + pg
    if cfg.centred_fraction > 0 and bool((targets[:, 0] >= 0).all()):
        # one cube per clip on the target keeps f_L sharp while most sampled cubes still miss: the reward
        # is only informative if a hit is recognised
        loss = loss + step_pretrain_local(model, cfg, batch, gen).loss
    hit = (local_aux.argmax(-1) == y.unsqueeze(1)).float().mean().item()
    return StepResult(loss, exit_logits[:, -1].argmax(-1) == y, {"aux_acc": hit, "entropy": entropy.mean().item()})


def step_deep_feature(
    model: AdaFocusV3, cfg: TrainConfig, batch: tuple[torch.Tensor, ...], gen: torch.Generator
) -> StepResult:
    frames, y, targets = batch
    glance = run_glance(model, frames, policy_trains_glance=False)
    global_aux = model.global_aux(glance.global_feats)
    exit_a, local_a = branch(model, frames, glance, glance.centres, "deep_feature")
    rand = random_centres(model, targets, cfg.centred_fraction, cfg.jitter, gen)
    exit_b, local_b = branch(model, frames, glance, rand, "random")
    loss = (exit_loss(exit_a, local_a, global_aux, y) + exit_loss(exit_b, local_b, global_aux, y)) / 2
    rand_acc = (exit_b[:, -1].argmax(-1) == y).float().mean().item()
    return StepResult(loss, exit_a[:, -1].argmax(-1) == y, {"rand_acc": rand_acc})


def step_random(
    model: AdaFocusV3, cfg: TrainConfig, batch: tuple[torch.Tensor, ...], gen: torch.Generator
) -> StepResult:
    frames, y, targets = batch
    glance = run_glance(model, frames, policy_trains_glance=False)
    rand = random_centres(model, targets, cfg.centred_fraction, cfg.jitter, gen)
    exit_logits, local_aux = branch(model, frames, glance, rand, "random")
    loss = exit_loss(exit_logits, local_aux, model.global_aux(glance.global_feats), y)
    return StepResult(loss, exit_logits[:, -1].argmax(-1) == y)


def step_policy_only(
    model: AdaFocusV3, cfg: TrainConfig, batch: tuple[torch.Tensor, ...], gen: torch.Generator
) -> StepResult:
    frames, y, _ = batch
    glance = run_glance(model, frames, policy_trains_glance=False)
    exit_logits, local_aux = branch(model, frames, glance, glance.centres, "deep_feature")
    loss = exit_loss(exit_logits, local_aux, model.global_aux(glance.global_feats), y)
    return StepResult(loss, exit_logits[:, -1].argmax(-1) == y)


STEP_FNS = {
    "pretrain_local": step_pretrain_local,
    "policy": step_policy,
    "deep_feature": step_deep_feature,
    "random": step_random,
    "policy_only": step_policy_only,
}
# modules each stage trains (the rest stay frozen in that stage)
STAGE_MODULES = {
    "pretrain_local": ("local_encoder", "local_aux"),
    "policy": MODULES,
    "deep_feature": MODULES,
    "random": tuple(m for m in MODULES if m != "policy"),
    "policy_only": ("policy",),
}
PAPER_STAGES = ("deep_feature", "random", "policy_only")


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
    cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True
) -> tuple[AdaFocusV3, TrainState]:
    """Run every stage (continuing a checkpoint in ``run_dir`` if ``resume``); returns the trained model."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = AdaFocusV3(cfg.model)
    state, opt_state = load_checkpoint(run_dir, model) if resume else (TrainState(), None)
    model.to(device).train()
    data = build_dataset(cfg.data, cfg.model.num_frames, cfg.model.frame_size, cfg.model.labels or None)
    length = len(data)  # type: ignore[arg-type]
    while state.stage < len(cfg.stages):
        stage, total = cfg.stages[state.stage]
        opt = make_optimizer(model, cfg, stage)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
            opt_state = None
        # step s of stage i always sees the same clips and random draws, resumed or not
        offset = sum(steps for _, steps in cfg.stages[: state.stage])
        plan = batch_plan(length, cfg.batch_size, offset + state.step, total - state.step, cfg.seed, cfg.data.is_synth)
        bar = tqdm(total=total, initial=state.step, desc=stage, disable=not progress, dynamic_ncols=True)
        summary = _run_stage(model, cfg, stage, state, opt, iterate(data, plan, cfg.workers), device, bar, run_dir)
        bar.close()
        state.history.append({"stage": stage, "steps": total, **summary})
        state.stage, state.step = state.stage + 1, 0
        save_checkpoint(
            run_dir, model, make_optimizer(model, cfg, cfg.stages[min(state.stage, len(cfg.stages) - 1)][0]), state, cfg
        )
    model.eval()
    return model, state


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


def synth_spec(preset: SynthConfig, seed: int, count: int) -> DataSpec:
    return DataSpec(source="synth", seed=seed, count=count, synth=preset)


__all__ = ["STAGES", "Sample", "TrainConfig", "TrainState", "train"]


def training_section(cfg: TrainConfig, state: TrainState, command: str, cost_line: str) -> str:
    """The model card's training part: data, stages actually run, wall-clock, reproduce command."""
    data = (
        f"synthetic focus benchmark (`model/synth.py`), train stream seed {cfg.data.seed}, "
        f"{cfg.data.count} clips generated on the fly; {cfg.data.synth}"
        if cfg.data.is_synth
        else f"class folders under `{cfg.data.source}`"
    )
    rows = "\n".join(
        f"| {h['stage']} | {h['steps']} | {h.get('final_loss_ema', float('nan')):.3f} | "
        f"{h.get('final_acc_ema', float('nan')):.3f} |"
        for h in state.history
    )
    mult = ", ".join(f"{k} x{v}" for k, v in cfg.lr_mult) or "none"
    return (
        f"## Training\n\n"
        f"- Data: {data}\n"
        f"- Stages, in order (batch {cfg.batch_size}, AdamW lr {cfg.lr}, weight decay {cfg.weight_decay}, "
        f"warm-up {cfg.warmup_steps} steps then cosine per stage; lr multipliers in the paper stages: {mult}; "
        f"entropy bonus {cfg.entropy_bonus}; {cfg.centred_fraction:.0%} of random-branch cubes on the target):\n\n"
        f"| stage | steps | final loss (EMA) | final train acc (EMA) |\n|---|---|---|---|\n{rows}\n\n"
        f"- Wall-clock: {state.seconds / 60:.1f} min on `{cfg.device}`.\n"
        f"- Cost: {cost_line}\n"
        f"- Command:\n\n```\n{command}\n```\n"
    )
