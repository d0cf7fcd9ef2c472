"""The training objectives of every stage of ``adafocus train`` (see ``model.training.train`` for the recipe, and
``model.training.config`` for ``TrainConfig``): the building blocks (branches, losses, target-centred and random
cubes, policy sampling and rewards) and one step function per stage, returning the loss of one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from model.adafocus import AdaFocusV3, GlanceOutput
from model.data.targets import cube_hits
from model.training.config import MODULES, TrainConfig


# ------------------------------------------------------------------------------------------------ building blocks
def run_glance(model: AdaFocusV3, frames: torch.Tensor, policy_trains_glance: bool) -> GlanceOutput:
    """``model.glance`` on full-resolution frames, optionally letting the policy's gradient reach f_G."""
    return model.glance(model.glance_input(frames), policy_trains_glance=policy_trains_glance)


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


def has_boxes(boxes: torch.Tensor) -> bool:
    """Whether every clip of a (B, T, 4) batch has ground-truth boxes."""
    return bool((boxes[..., 3] >= 0).all())


def centred_centres(model: AdaFocusV3, boxes: torch.Tensor, jitter: int, gen: torch.Generator) -> torch.Tensor:
    """Centres (B, 3) of cubes on the object in one of its visible frames (drawn at random), shifted by up to
    +-``jitter`` px, or anywhere over the object when it is larger than the cube. ``boxes`` (B, T, 4)."""
    T, H, W = model.video_shape
    t, h, w = model.cube_shape
    B = boxes.shape[0]
    visible = (boxes[..., 3] > 0).float().cpu() + 1e-6  # (B, T); an invisible object falls back to any frame
    frame = torch.multinomial(visible, 1, generator=gen).squeeze(1).to(boxes.device)  # (B,)
    box = boxes[torch.arange(B, device=boxes.device), frame].float()  # (B, 4)
    bx, by, size = box[:, 0], box[:, 1], box[:, 2]
    noise = (torch.rand(B, 2, generator=gen) * 2 - 1).to(boxes.device)  # (B, 2)
    spread = torch.clamp((size - w) / 2, min=float(jitter))  # (B,)
    x0 = bx + size / 2 - w / 2 + noise[:, 0] * spread
    y0 = by + size / 2 - h / 2 + noise[:, 1] * spread
    t0 = (frame.float() - (t - 1) / 2).clamp(min=0)
    room = torch.tensor([max(W - w, 1), max(H - h, 1), max(T - t, 1)], device=boxes.device, dtype=torch.float32)
    return (torch.stack([x0, y0, t0], dim=1) / room).clamp(0, 1)  # (B, 3)


def random_centres(
    model: AdaFocusV3, targets: torch.Tensor, fraction: float, jitter: int, gen: torch.Generator
) -> torch.Tensor:
    """Uniform random centres (B, K, 3); with known targets, ``fraction`` of the cubes sit on the target."""
    B, K = targets.shape[0], model.config.num_cubes
    centres = torch.rand(B, K, 3, generator=gen).to(targets.device)  # (B, K, 3)
    if fraction > 0 and has_boxes(targets):
        on = (torch.rand(B, K, generator=gen) < fraction).to(targets.device)  # (B, K)
        for k in range(K):
            centred = centred_centres(model, targets, jitter, gen)  # (B, 3)
            centres[:, k] = torch.where(on[:, k : k + 1], centred, centres[:, k])
    return centres


def sample_cells(
    model: AdaFocusV3, policy_logits: torch.Tensor, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, ...]:
    """Sample one cell per cube from the heatmaps (B, K, T, hg, wg), cube by cube; with ``distinct_frames``
    placement cube k's categorical excludes the frames earlier cubes took.

    Returns centres (B, K, 3), log-probabilities (B, K) and entropies (B, K) of the categoricals.
    """
    B, K, Tg, hg, wg = policy_logits.shape
    distinct = model.config.placement == "distinct_frames"
    gx, gy, gt = model.cell_centres((Tg, hg, wg), policy_logits)
    frame_ids = torch.arange(Tg, device=policy_logits.device)  # (T,)
    taken = torch.zeros(B, Tg, dtype=torch.bool, device=policy_logits.device)  # (B, T)
    centres, chosen, entropies = [], [], []
    for k in range(K):
        heat = policy_logits[:, k]  # (B, T, hg, wg)
        if distinct:
            heat = heat.masked_fill(taken.view(B, Tg, 1, 1), float("-inf"))
        log_p = heat.flatten(1).log_softmax(-1)  # (B, N)
        probs = log_p.exp()
        # sampled on CPU so that a CPU generator fixes the draw
        idx = torch.multinomial(probs.detach().cpu(), 1, generator=gen).squeeze(1).to(policy_logits.device)  # (B,)
        ti, yi, xi = idx // (hg * wg), (idx // wg) % hg, idx % wg
        taken = taken | (frame_ids.unsqueeze(0) == ti.unsqueeze(1))
        centres.append(torch.stack([gx[xi], gy[yi], gt[ti]], dim=-1))  # (B, 3)
        chosen.append(log_p.gather(-1, idx.unsqueeze(-1)).squeeze(-1))  # (B,)
        entropies.append(-(probs * log_p.masked_fill(probs == 0, 0.0)).sum(-1))  # (B,)
    return torch.stack(centres, dim=1), torch.stack(chosen, dim=1), torch.stack(entropies, dim=1)


def policy_rewards(
    exit_logits: torch.Tensor, local_aux: torch.Tensor, y: torch.Tensor, kind: str, own_weight: float
) -> torch.Tensor:
    """(B, K) REINFORCE rewards of the K sampled cubes (no gradient); see stage ``policy`` in model.training.train."""
    B, K, _ = local_aux.shape
    own = -F.cross_entropy(local_aux.flatten(0, 1), y.repeat_interleave(K), reduction="none").view(B, K)
    if kind == "own":
        return own
    E = exit_logits.shape[1]
    ce = F.cross_entropy(exit_logits.flatten(0, 1), y.repeat_interleave(E), reduction="none").view(B, E)
    return ce[:, :-1] - ce[:, 1:] + own_weight * own  # (B, K)


def placement_loss(model: AdaFocusV3, policy_logits: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The hit-rate term: mean over cubes of -log(mass of heatmap k on the cells holding the product's centre in
    the frames it is visible in). ``policy_logits`` (B, K, T, hg, wg), ``boxes`` (B, T, 4) from the generator.

    Added because the shipped model's cubes missed small products (cube-1 hit rate 22% on ``small`` clips, while
    the same encoders reach 77% with the cube moved onto the product: ``adafocus diagnose``)."""
    B, _, Tg, hg, wg = policy_logits.shape
    _, H, W = model.video_shape
    box = boxes.float()  # (B, T, 4)
    xi = ((box[..., 0] + box[..., 2] / 2) * wg / W).long().clamp(0, wg - 1)  # (B, T)
    yi = ((box[..., 1] + box[..., 2] / 2) * hg / H).long().clamp(0, hg - 1)  # (B, T)
    target = torch.zeros(B, Tg, hg, wg, dtype=torch.bool, device=policy_logits.device)  # (B, T, hg, wg)
    b, t = torch.meshgrid(torch.arange(B), torch.arange(Tg), indexing="ij")  # (B, T) each
    target[b, t, yi, xi] = boxes[..., 3] > 0
    flat = policy_logits.flatten(2)  # (B, K, N)
    mask = target.flatten(1).unsqueeze(1).expand_as(flat)  # (B, K, N)
    on = flat.masked_fill(~mask, float("-inf")).logsumexp(-1)  # (B, K)
    valid = mask.any(-1)  # (B, K): clips whose product is visible somewhere
    nll = (flat.logsumexp(-1) - on).masked_fill(~valid, 0.0)  # (B, K)
    return nll.sum() / valid.sum().clamp(min=1)


def with_placement(
    model: AdaFocusV3, cfg: TrainConfig, loss: torch.Tensor, policy_logits: torch.Tensor, boxes: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """``loss`` plus ``cfg.placement_weight`` x the hit-rate term where the clips have boxes."""
    if cfg.placement_weight <= 0 or not has_boxes(boxes):
        return loss, {}
    term = placement_loss(model, policy_logits, boxes)
    return loss + cfg.placement_weight * term, {"placement_nll": term.item()}


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


def step_pretrain_glance(
    model: AdaFocusV3, cfg: TrainConfig, batch: tuple[torch.Tensor, ...], gen: torch.Generator
) -> StepResult:
    """f_G + its auxiliary head on the whole (low-resolution) input: stills (``pretrain_glance``) or clips
    (``pretrain_glance_clip``), which differ only in the number of frames."""
    frames, y, _ = batch
    maps = model.encode_frames(model.global_encoder, model.normalize(model.glance_input(frames)))  # (B, Cg, T, h, w)
    logits = model.global_aux(model.pool_glance(maps))  # (B, classes)
    return StepResult(F.cross_entropy(logits, y), logits.argmax(-1) == y)


def step_placement(
    model: AdaFocusV3, cfg: TrainConfig, batch: tuple[torch.Tensor, ...], gen: torch.Generator
) -> StepResult:
    """Where to look, before what to do (curriculum): f_G and the policy on the hit-rate term alone (the policy's
    gradient reaches f_G), plus f_G's auxiliary CE so that its features keep the class. Only the glance runs: no
    cube, so a step costs a fraction of a policy step. Correct = cube 1 at the heatmap's centre sees the product."""
    frames, y, targets = batch
    glance = run_glance(model, frames, policy_trains_glance=True)
    term = placement_loss(model, glance.policy_logits, targets)
    loss = term + F.cross_entropy(model.global_aux(glance.global_feats), y)
    starts = model.cube_starts(glance.centres.detach()).cpu().numpy()  # (B, K, 3)
    hits = torch.from_numpy(cube_hits(starts, model.cube_shape, targets.cpu().numpy())[:, 0])  # (B,)
    return StepResult(loss, hits, {"placement_nll": term.item()})


def step_policy(
    model: AdaFocusV3, cfg: TrainConfig, batch: tuple[torch.Tensor, ...], gen: torch.Generator
) -> StepResult:
    frames, y, targets = batch
    glance = run_glance(model, frames, policy_trains_glance=True)
    centres, log_p, entropy = sample_cells(model, glance.policy_logits, gen)  # (B, K, 3), (B, K), (B, K)
    exit_logits, local_aux = branch(model, frames, glance, centres.detach(), "random")
    with torch.no_grad():
        reward = policy_rewards(exit_logits, local_aux, y, cfg.policy_reward, cfg.own_reward_weight)  # (B, K)
        advantage = reward - reward.mean(dim=0, keepdim=True)  # (B, K) batch-mean baseline per cube
    pg = -(advantage * log_p).mean() - cfg.entropy_bonus * entropy.mean()
    loss = exit_loss(exit_logits, local_aux, model.global_aux(glance.global_feats), y) + pg
    if cfg.centred_fraction > 0 and has_boxes(targets):
        # one cube per clip on the target keeps f_L sharp while most sampled cubes still miss: the reward
        # is only informative if a hit is recognised
        loss = loss + step_pretrain_local(model, cfg, batch, gen).loss
    loss, extra = with_placement(model, cfg, loss, glance.policy_logits, targets)
    hit = (local_aux.argmax(-1) == y.unsqueeze(1)).float().mean().item()
    extra.update(aux_acc=hit, entropy=entropy.mean().item())
    return StepResult(loss, exit_logits[:, -1].argmax(-1) == y, extra)


def paper_objective(
    model: AdaFocusV3, cfg: TrainConfig, batch: tuple[torch.Tensor, ...], gen: torch.Generator, crop_mode: str
) -> StepResult:
    """The paper's objective: the policy's centres cropped with ``crop_mode``'s gradient, plus a random-centre
    branch; mean over branches of (sum of CE over every exit) + the auxiliary heads' CE."""
    frames, y, targets = batch
    glance = run_glance(model, frames, policy_trains_glance=False)
    global_aux = model.global_aux(glance.global_feats)
    exit_a, local_a = branch(model, frames, glance, glance.centres, crop_mode)
    rand = random_centres(model, targets, cfg.centred_fraction, cfg.jitter, gen)
    exit_b, local_b = branch(model, frames, glance, rand, "random")
    loss = (exit_loss(exit_a, local_a, global_aux, y) + exit_loss(exit_b, local_b, global_aux, y)) / 2
    loss, extra = with_placement(model, cfg, loss, glance.policy_logits, targets)
    extra["rand_acc"] = (exit_b[:, -1].argmax(-1) == y).float().mean().item()
    return StepResult(loss, exit_a[:, -1].argmax(-1) == y, extra)


def step_deep_feature(
    model: AdaFocusV3, cfg: TrainConfig, batch: tuple[torch.Tensor, ...], gen: torch.Generator
) -> StepResult:
    return paper_objective(model, cfg, batch, gen, "deep_feature")


def step_pixel(
    model: AdaFocusV3, cfg: TrainConfig, batch: tuple[torch.Tensor, ...], gen: torch.Generator
) -> StepResult:
    return paper_objective(model, cfg, batch, gen, "pixel")


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
    "pretrain_glance": step_pretrain_glance,
    "pretrain_glance_clip": step_pretrain_glance,
    "pretrain_local_still": step_pretrain_local,  # a still's box is its only frame's: the same centred crop
    "pretrain_local": step_pretrain_local,
    "placement": step_placement,
    "policy": step_policy,
    "deep_feature": step_deep_feature,
    "pixel": step_pixel,
    "random": step_random,
    "policy_only": step_policy_only,
}
# modules each stage trains (the rest stay frozen in that stage)
STAGE_MODULES = {
    "pretrain_glance": ("global_encoder", "global_aux"),
    "pretrain_glance_clip": ("global_encoder", "global_aux"),
    "pretrain_local_still": ("local_encoder", "local_aux"),
    "pretrain_local": ("local_encoder", "local_aux"),
    "placement": ("global_encoder", "policy", "global_aux"),
    "policy": MODULES,
    "deep_feature": MODULES,
    "pixel": MODULES,
    "random": tuple(m for m in MODULES if m != "policy"),
    "policy_only": ("policy",),
}
PAPER_STAGES = ("deep_feature", "pixel", "random", "policy_only")
