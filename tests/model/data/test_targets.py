import numpy as np

from model.data.targets import cube_hits, has_boxes, no_boxes, static_boxes


def test_static_boxes_are_visible_only_in_their_frames() -> None:
    boxes = static_boxes(3, 4, 8, first=1, frames=2, num_frames=4)
    assert boxes.tolist() == [[3, 4, 8, 0], [3, 4, 8, 1], [3, 4, 8, 1], [3, 4, 8, 0]]
    assert has_boxes(boxes[None]) and not has_boxes(no_boxes(4)[None])


def test_cube_hits_needs_a_visible_frame_and_half_the_object() -> None:
    boxes = np.stack([static_boxes(10, 10, 8, first=5, frames=2, num_frames=8)] * 4)  # (4, T, 4)
    starts = np.array([[[10, 10, 5]], [[10, 10, 7]], [[14, 10, 6]], [[15, 10, 6]]])  # (4, 1, 3)
    assert cube_hits(starts, (1, 8, 8), boxes)[:, 0].tolist() == [True, False, True, False]


def test_an_object_larger_than_the_cube_counts_half_the_cube() -> None:
    boxes = static_boxes(0, 0, 20, first=0, frames=1, num_frames=1)[None]  # (1, 1, 4): 20 px object
    inside, half_out = np.array([[[4, 4, 0]]]), np.array([[[16, 0, 0]]])  # 8 px cube fully / half on it
    assert cube_hits(inside, (1, 8, 8), boxes).tolist() == [[True]]
    assert cube_hits(half_out, (1, 8, 8), boxes).tolist() == [[True]]
    assert cube_hits(np.array([[[17, 0, 0]]]), (1, 8, 8), boxes).tolist() == [[False]]


def test_boxes_follow_a_moving_object() -> None:
    boxes = np.array([[[0, 0, 8, 1], [20, 0, 8, 1]]])  # (1, T=2, 4): the object moves right
    starts = np.array([[[20, 0, 0], [20, 0, 1]]])  # the same place in frame 0 and frame 1
    assert cube_hits(starts, (1, 8, 8), boxes).tolist() == [[False, True]]
