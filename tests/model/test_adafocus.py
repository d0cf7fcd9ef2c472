import pytest
import torch

from model.adafocus import CROP_MODES, AdaFocusV3
from model.config import get_config
from model.cubes import covered_cube_mask, integer_crop, pixel_crop


@pytest.fixture()
def tiny() -> AdaFocusV3:
    torch.manual_seed(0)
    return AdaFocusV3(get_config("tiny"))


def frames(b: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cfg = get_config("tiny")
    shape = (b, 3, cfg.num_frames, cfg.frame_size, cfg.frame_size)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def test_stage_shapes(tiny: AdaFocusV3) -> None:
    cfg = tiny.config
    tiny.eval()
    video = frames()
    small = tiny.glance_input(video)
    assert small.shape == (3, 3, cfg.num_frames, cfg.glance_size, cfg.glance_size)
    out = tiny.glance(small)
    assert out.centres.shape == (3, cfg.num_cubes, 3)
    assert bool(((out.centres >= 0) & (out.centres <= 1)).all())
    assert out.logits.shape == (3, cfg.num_classes)
    assert out.state.step.tolist() == [0, 0, 0]
    cubes = tiny.crop_cubes(video, out.centres[:, 0])
    assert cubes.shape == (3, 3, cfg.cube_frames, cfg.cube_size, cfg.cube_size)
    assert cubes.dtype == torch.uint8
    logits, state = tiny.focus(cubes, out.state)
    assert logits.shape == (3, cfg.num_classes)
    assert state.step.tolist() == [1, 1, 1]
    assert state.pooled.shape == (3, cfg.classifier_hidden)


def test_training_forward_shapes(tiny: AdaFocusV3) -> None:
    cfg = tiny.config
    tiny.train()
    for mode in CROP_MODES:
        out = tiny(frames(), crop_mode=mode)
        assert out.exit_logits.shape == (3, cfg.num_cubes + 1, cfg.num_classes)
        assert out.local_aux_logits.shape == (3, cfg.num_cubes, cfg.num_classes)
        assert out.global_aux_logits.shape == (3, cfg.num_classes)


def test_staged_path_equals_eval_forward_at_every_exit(tiny: AdaFocusV3) -> None:
    tiny.eval()
    video = frames(4)
    with torch.no_grad():
        full = tiny(video)
        out = tiny.glance(tiny.glance_input(video))
        state, logits = out.state, [out.logits]
        for k in range(tiny.config.num_cubes):
            step_logits, state = tiny.focus(tiny.crop_cubes(video, full.centres[:, k]), state)
            logits.append(step_logits)
    torch.testing.assert_close(torch.stack(logits, 1), full.exit_logits, rtol=1e-5, atol=1e-5)


def test_focus_batch_may_mix_step_indices(tiny: AdaFocusV3) -> None:
    """Samples at different steps share one focus batch and get the same result as alone."""
    tiny.eval()
    video = frames(2)
    with torch.no_grad():
        out = tiny.glance(tiny.glance_input(video))
        cubes = tiny.crop_cubes(video, out.centres[:, 0])
        _, state1 = tiny.focus(cubes, out.state)  # both at step 1
        mixed = state1._replace(step=torch.tensor([1, 0]), pooled=torch.stack([state1.pooled[0], out.state.pooled[1]]))
        mixed_logits, _ = tiny.focus(cubes, mixed)
        alone, _ = tiny.focus(cubes[1:], type(out.state)(*(t[1:] for t in out.state)))
    torch.testing.assert_close(mixed_logits[1:], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("mode", "gets_grad"), [("deep_feature", True), ("pixel", True), ("random", False)])
def test_policy_gradient_per_crop_mode(tiny: AdaFocusV3, mode: str, gets_grad: bool) -> None:
    tiny.train()
    out = tiny(frames(), crop_mode=mode)  # type: ignore[arg-type]
    labels = torch.tensor([0, 1, 2])
    loss = torch.nn.functional.cross_entropy(out.exit_logits.flatten(0, 1), labels.repeat_interleave(4))
    loss.backward()
    grads = [p.grad for p in tiny.policy.parameters()]
    total = sum(float(g.abs().sum()) for g in grads if g is not None)
    assert (total > 0) == gets_grad
    assert all(p.grad is not None for p in tiny.local_encoder.parameters())


def test_integer_crop_at_integer_centres_equals_slicing() -> None:
    video = torch.arange(2 * 3 * 6 * 10 * 12, dtype=torch.int32).view(2, 3, 6, 10, 12)
    starts = torch.tensor([[0, 0, 0], [5, 3, 4]])  # (x0, y0, t0)
    cubes = integer_crop(video, starts, (2, 4, 7))
    assert torch.equal(cubes[0], video[0, :, 0:2, 0:4, 0:7])
    assert torch.equal(cubes[1], video[1, :, 4:6, 3:7, 5:12])


def test_model_crop_maps_unit_centres_to_the_corners(tiny: AdaFocusV3) -> None:
    video = frames(2)
    cfg = tiny.config
    centres = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    cubes = tiny.crop_cubes(video, centres)
    c, t = cfg.cube_size, cfg.cube_frames
    assert torch.equal(cubes[0], video[0, :, :t, :c, :c])
    assert torch.equal(cubes[1], video[1, :, -t:, -c:, -c:])


def test_pixel_crop_at_integer_starts_equals_slicing() -> None:
    video = torch.randn(1, 3, 5, 9, 9)
    cube = pixel_crop(video, torch.tensor([[2.0, 3.0, 1.0]]), (2, 4, 4))
    torch.testing.assert_close(cube[0], video[0, :, 1:3, 3:7, 2:6])


def test_covered_cube_mask() -> None:
    starts_t = torch.tensor([[0, 0, 3, 1], [2, 3, 2, 4]])
    assert covered_cube_mask(starts_t, 1).tolist() == [
        [False, True, False, False],
        [False, False, True, False],
    ]
    assert covered_cube_mask(torch.tensor([[0, 1, 0]]), 2).tolist() == [[False, False, True]]


def test_skip_covered_frames_repeats_the_previous_exit() -> None:
    torch.manual_seed(0)
    model = AdaFocusV3(get_config("tiny").replace(skip_covered_frames=True)).eval()
    video = frames(1)
    centres = torch.tensor([[[0.2, 0.2, 0.0], [0.9, 0.9, 0.0], [0.5, 0.5, 1.0]]])  # cube 1 reuses frame 0
    with torch.no_grad():
        out = model(video, centres=centres)
    assert model.skip_mask(centres).tolist() == [[False, True, False]]
    torch.testing.assert_close(out.exit_logits[0, 2], out.exit_logits[0, 1])
    assert not torch.allclose(out.exit_logits[0, 3], out.exit_logits[0, 2])


def distinct() -> AdaFocusV3:
    torch.manual_seed(0)
    cfg = get_config("tiny").replace(placement="distinct_frames", glance_pool="mean_max")
    return AdaFocusV3(cfg).eval()


def test_distinct_frames_placement_gives_every_cube_its_own_frame() -> None:
    model = distinct()
    logits = torch.full((1, 3, 4, 4, 4), -10.0)  # (B, K, T, hg, wg): every heatmap prefers frame 2 ...
    logits[:, :, 2, 1, 3] = 5.0
    logits[:, 1, 0, 0, 0] = 3.0  # ... cube 2's second choice is frame 0, cube 3's is frame 3 (x = 2)
    logits[:, 2, 3, 0, 2] = 4.0
    centres = model.heatmap_centres(logits)  # (1, 3, 3)
    starts = model.cube_starts(centres)[0]  # (3, 3) x0, y0, t0
    assert starts[:, 2].tolist() == [2, 0, 3]
    gx, gy, _ = model.cell_centres((4, 4, 4), logits)
    assert torch.allclose(centres[0, 0, :2], torch.stack([gx[3], gy[1]]), atol=1e-3)  # the soft-argmax in frame 2
    assert torch.allclose(centres[0, 1, :2], torch.stack([gx[0], gy[0]]), atol=1e-3)


def test_mean_max_glance_pool_doubles_the_clip_feature_and_the_staged_api_still_matches_forward() -> None:
    model = distinct()
    video = frames(b=2)
    out = model.glance(model.glance_input(video))
    assert out.global_feats.shape == (2, 2 * model.global_encoder.out_channels)
    starts = model.cube_starts(out.centres)  # (2, K, 3)
    assert all(len(set(row.tolist())) == model.config.num_cubes for row in starts[..., 2])
    with torch.no_grad():
        full = model(video).exit_logits  # (2, K+1, C)
        state, logits = out.state, [out.logits]
        for k in range(model.config.num_cubes):
            step_logits, state = model.focus(model.crop_cubes(video, out.centres[:, k]), state)
            logits.append(step_logits)
    assert torch.allclose(torch.stack(logits, dim=1), full, atol=1e-5)


def test_distinct_frames_needs_enough_frames() -> None:
    with pytest.raises(ValueError, match="distinct_frames"):
        get_config("tiny").replace(placement="distinct_frames", num_cubes=5)
