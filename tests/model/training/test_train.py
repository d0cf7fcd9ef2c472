import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from model.adafocus import AdaFocusV3
from model.config import get_config
from model.data.datasets import PRESETS, DataSpec, build_dataset, iterate
from model.data.fashion import FASHION_DIR
from model.data.synth import SynthConfig
from model.data.targets import cube_hits
from model.training.config import TrainConfig
from model.training.objectives import STEP_FNS, centred_centres, policy_rewards, sample_cells
from model.training.train import (
    TrainState,
    load_checkpoint,
    lr_factor,
    make_optimizer,
    save_checkpoint,
    train,
    training_section,
)

ROOT = Path(__file__).resolve().parents[3]
FASHION_INSTALLED = (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()

# clips shaped like the tiny config's input: 4 frames of 32x32, 5 classes
SMALL = SynthConfig(num_frames=4, size=32, num_classes=5, target_size=8, visible_frames=1, distractor_sizes=(3, 6))


def tiny_setup(stages: tuple[tuple[str, int], ...] = (("deep_feature", 1),)) -> TrainConfig:
    model = get_config("tiny").replace(labels=SMALL.class_names)
    return TrainConfig(model=model, data=DataSpec("synth", 0, 64, SMALL), stages=stages, batch_size=8, workers=0)


def fixed_batch(n: int = 8) -> tuple[torch.Tensor, ...]:
    data = build_dataset(DataSpec("synth", 5, n, SMALL), 4, 32)
    return tuple(next(iterate(data, [list(range(n))], workers=0)))


# policy_only is left out: its only gradient is the deep-feature estimate through a moving integer crop
@pytest.mark.parametrize("stage", ["pretrain_local", "policy", "deep_feature", "random"])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(stage: str) -> None:
    cfg = tiny_setup()
    torch.manual_seed(0)
    model = AdaFocusV3(cfg.model).train()
    model.classifier.dropout.p = 0.0  # the same batch must give the same loss twice
    batch = fixed_batch()
    opt = make_optimizer(model, cfg, stage)
    for group in opt.param_groups:
        group["lr"] = 1e-2

    def loss() -> torch.Tensor:
        return STEP_FNS[stage](model, cfg, batch, torch.Generator().manual_seed(1)).loss

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item()


def test_deep_feature_stage_gives_the_policy_a_gradient() -> None:
    cfg = tiny_setup()
    torch.manual_seed(0)
    model = AdaFocusV3(cfg.model).train()
    STEP_FNS["deep_feature"](model, cfg, fixed_batch(), torch.Generator().manual_seed(1)).loss.backward()
    assert model.policy.head.weight.grad is not None
    assert model.policy.head.weight.grad.abs().sum().item() > 0


def test_sampled_cells_are_cell_centres_with_log_probabilities() -> None:
    torch.manual_seed(0)
    model = AdaFocusV3(get_config("tiny"))
    logits = torch.full((2, 3, 4, 4, 4), -1e4)
    logits[:, :, 2, 1, 3] = 0.0  # all mass on cell (t=2, y=1, x=3)
    centres, log_p, entropy = sample_cells(model, logits, torch.Generator().manual_seed(0))
    gx, gy, gt = model.cell_centres((4, 4, 4), logits)
    assert torch.allclose(centres, torch.stack([gx[3], gy[1], gt[2]]).expand(2, 3, 3))
    assert torch.allclose(log_p, torch.zeros(2, 3), atol=1e-6)
    assert torch.allclose(entropy, torch.zeros(2, 3), atol=1e-6)


def test_target_centred_cubes_hit_the_target() -> None:
    model = AdaFocusV3(get_config("tiny"))
    _, _, targets = fixed_batch(16)
    centres = centred_centres(model, targets, jitter=0, gen=torch.Generator().manual_seed(0))
    starts = model.cube_starts(centres).unsqueeze(1).numpy()  # (B, 1, 3)
    assert targets.shape == (16, 4, 4)
    assert cube_hits(starts, model.cube_shape, targets.numpy()).all()


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)


def test_checkpoint_round_trip_and_resume_of_a_finished_run(tmp_path: Path) -> None:
    cfg = tiny_setup((("pretrain_local", 2), ("random", 1)))
    model, state = train(cfg, tmp_path, progress=False)
    assert [h["stage"] for h in state.history] == ["pretrain_local", "random"]
    resumed, resumed_state = train(cfg, tmp_path, resume=True, progress=False)
    assert resumed_state.stage == 2 and len(resumed_state.history) == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    fresh = AdaFocusV3(cfg.model)
    save_checkpoint(tmp_path / "b", model, make_optimizer(model, cfg, "random"), TrainState(1, 7), cfg)
    loaded_state, opt_state = load_checkpoint(tmp_path / "b", fresh)
    assert (loaded_state.stage, loaded_state.step) == (1, 7)
    assert opt_state is not None and "param_groups" in opt_state
    assert torch.equal(fresh.state_dict()["policy.head.weight"], model.state_dict()["policy.head.weight"])


def test_a_finished_run_whose_stage_list_grew_resumes_into_the_new_stage(tmp_path: Path) -> None:
    # the first run's last checkpoint holds pretrain_local's parameter groups; the new stage has others
    train(tiny_setup((("pretrain_local", 2),)), tmp_path / "grown", progress=False)
    both = tiny_setup((("pretrain_local", 2), ("placement", 2)))  # no dropout: equal to a whole run
    grown, state = train(both, tmp_path / "grown", resume=True, progress=False)
    whole, _ = train(both, tmp_path / "whole", progress=False)
    assert [h["stage"] for h in state.history] == ["pretrain_local", "placement"]
    for key, value in whole.state_dict().items():
        assert torch.allclose(value.float(), grown.state_dict()[key].float(), atol=1e-6), key


def test_stages_that_need_target_locations_refuse_real_data() -> None:
    with pytest.raises(ValueError, match="needs target locations"):
        TrainConfig(model=get_config("tiny"), data=DataSpec("/some/folder"), stages=(("pretrain_local", 1),))


def test_train_command_on_class_folders_writes_a_bundle_with_the_folder_labels(tmp_path: Path) -> None:
    from model.bundle import load_bundle
    from model.data.synth import make_clip, write_mp4
    from service.cli import main

    root = tmp_path / "data"
    for label, name in enumerate(("jump", "run")):
        (root / name).mkdir(parents=True)
        for i in range(2):
            write_mp4(root / name / f"{i}.mp4", make_clip(SMALL, label, i).frames)
    args = ["train", "--config", "tiny", "--data", str(root), "--stages", "random:1,policy:1,deep_feature:1"]
    out = tmp_path / "bundle"
    assert (
        main([*args, "--batch-size", "2", "--workers", "0", "--run-dir", str(tmp_path / "run"), "--out", str(out)]) == 0
    )
    bundle = load_bundle(out)
    assert bundle.config.labels == ("jump", "run") and bundle.config.num_classes == 2
    assert f"class folders under `{root}`" in bundle.model_card


def test_sampled_cells_take_distinct_frames_with_distinct_frames_placement() -> None:
    model = AdaFocusV3(get_config("tiny").replace(placement="distinct_frames"))
    logits = torch.zeros(5, 3, 4, 4, 4)
    logits[:, :, 1] = 8.0  # every cube's heatmap prefers frame 1
    centres, log_p, _ = sample_cells(model, logits, torch.Generator().manual_seed(0))
    frames = model.cube_starts(centres)[..., 2]  # (5, 3)
    assert all(len(set(row.tolist())) == 3 for row in frames)
    assert (frames[:, 0] == 1).all()  # the first cube takes the preferred frame; the others cannot
    assert torch.isfinite(log_p).all()


def test_marginal_reward_credits_what_a_cube_adds_to_the_earlier_ones() -> None:
    y = torch.tensor([0])
    sure, unsure = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    exit_logits = torch.stack([unsure, sure, sure], dim=1)  # (1, 3, 2): cube 1 helps, cube 2 repeats it
    local_aux = torch.stack([sure, sure], dim=1)  # (1, 2, 2): both cubes look good on their own
    own = policy_rewards(exit_logits, local_aux, y, "own", 0.5)
    assert own[0, 0] == pytest.approx(own[0, 1].item())
    marginal = policy_rewards(exit_logits, local_aux, y, "marginal", 0.0)
    gain = torch.log(torch.tensor(2.0)) - torch.log1p(torch.exp(torch.tensor(-4.0)))  # CE(unsure) - CE(sure)
    assert marginal[0].tolist() == pytest.approx([gain.item(), 0.0], abs=1e-6)


@pytest.mark.parametrize("source", ["synth", "fashion"])
def test_training_section_names_the_benchmark_module_that_exists(source: str) -> None:
    benchmark = SMALL if source == "synth" else PRESETS["fashion:tiny"]
    cfg = TrainConfig(model=get_config("tiny"), data=DataSpec(source, 0, 64, benchmark), stages=(("random", 1),))
    text = training_section(cfg, TrainState(1, 0), "adafocus train ...", "exit 0: 1.0 MMACs")
    assert re.findall(r"`([\w/]+\.py)`", text) == [f"model/data/{source}.py"]
    assert (ROOT / "model" / "data" / f"{source}.py").is_file()


def test_the_placement_term_is_the_heatmaps_log_mass_off_the_products_cells() -> None:
    from model.training.objectives import placement_loss

    model = AdaFocusV3(get_config("tiny"))  # 4 frames of 32 px; heatmaps of (4, 8, 8) cells here
    boxes = torch.tensor([[[0, 0, 8, 1], [12, 20, 8, 1], [0, 0, 8, 0], [0, 0, 8, 0]]])  # visible on 2 frames
    uniform = torch.zeros(1, 3, 4, 8, 8)
    assert placement_loss(model, uniform, boxes).item() == pytest.approx(math.log(4 * 64 / 2))
    peaked = uniform.clone()
    peaked[0, :, 1, 24 * 8 // 32, 16 * 8 // 32] = 50.0  # the product's centre (16, 24) on frame 1
    assert placement_loss(model, peaked, boxes).item() == pytest.approx(0.0, abs=1e-6)
    hidden = boxes.clone()
    hidden[..., 3] = 0
    assert placement_loss(model, uniform, hidden).item() == 0.0


def test_a_run_starts_from_the_backbone_weights_it_names(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from tests.model import torchvision_layout as tv

    local = get_config("tiny").local
    state = {k: torch.full(s, 0.25) for k, s in tv.resnet("basic", local.layers, local.base_channels).items()}
    save_file(state, str(tmp_path / "r.safetensors"))
    cfg = dataclasses.replace(
        tiny_setup((("random", 0),)), backbone_weights=(("local", str(tmp_path / "r.safetensors")),)
    )
    model, _ = train(cfg, tmp_path / "run", progress=False)
    assert torch.equal(model.local_encoder.layer1[0].conv2.weight, state["layer1.0.conv2.weight"])
    with pytest.raises(ValueError, match="not both"):
        train(cfg, tmp_path / "run2", progress=False, init_from=tmp_path / "r.safetensors")


@pytest.mark.skipif(not FASHION_INSTALLED, reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("stage", ["pretrain_glance", "pretrain_local_still"])
def test_still_stages_train_on_one_frame_stills_of_the_train_images(stage: str) -> None:
    from model.data.stills import StillDataset

    bench = PRESETS["fashion:tiny"]
    with pytest.raises(ValueError, match="stills of the fashion benchmark"):
        tiny_setup(((stage, 1),))
    stills = StillDataset(bench, "train", 0, 8)  # type: ignore[arg-type]
    frames, _, boxes = stills[0]
    assert frames.shape == (3, 1, 32, 32) and boxes.shape == (1, 4) and int(boxes[0, 3]) == 1
    cfg = TrainConfig(
        model=get_config("tiny").replace(num_classes=10), data=DataSpec("fashion", 0, 8, bench), stages=((stage, 1),)
    )
    batch = tuple(next(iterate(stills, [list(range(8))], workers=0)))
    torch.manual_seed(0)
    model = AdaFocusV3(cfg.model).train()
    opt = make_optimizer(model, cfg, stage)
    for group in opt.param_groups:
        group["lr"] = 1e-2
    losses = []
    for _ in range(2):
        loss = STEP_FNS[stage](model, cfg, batch, torch.Generator().manual_seed(1)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]


@pytest.mark.skipif(not FASHION_INSTALLED, reason="Debian's dataset-fashion-mnist is not installed")
def test_a_killed_run_of_stills_then_clips_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model.training import objectives

    bench = PRESETS["fashion:tiny"]
    cfg = TrainConfig(
        model=get_config("tiny").replace(num_classes=10), data=DataSpec("fashion", 0, 32, bench),
        stages=(("pretrain_local_still", 3), ("placement", 4)), batch_size=4, workers=0, checkpoint_every=2,
    )  # fmt: skip
    whole, _ = train(cfg, tmp_path / "whole", progress=False)
    calls = {"n": 0}
    placement = objectives.STEP_FNS["placement"]

    def dies_on_the_third_call(*args: object) -> objectives.StepResult:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as a kill: after the step-2 checkpoint of the clip stage
        return placement(*args)  # type: ignore[arg-type]

    monkeypatch.setitem(objectives.STEP_FNS, "placement", dies_on_the_third_call)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", progress=False)
    monkeypatch.setitem(objectives.STEP_FNS, "placement", placement)
    state = json.loads((tmp_path / "killed" / "state.json").read_text())["state"]
    assert (state["stage"], state["step"]) == (1, 2)
    resumed, resumed_state = train(cfg, tmp_path / "killed", resume=True, progress=False)
    assert [h["stage"] for h in resumed_state.history] == ["pretrain_local_still", "placement"]
    for key, value in whole.state_dict().items():
        assert torch.allclose(value.float(), resumed.state_dict()[key].float(), atol=1e-6), key
