"""The shared tracker interface: result types and the input checks every tracker uses."""

import numpy as np
import pytest

from threeam_model.interface import (
    FrameError,
    FrameResult,
    ObjectResult,
    PromptError,
    check_frame,
    check_obj_id,
    check_prompt,
)


def _obj(obj_id, logits):
    return ObjectResult.from_logits(obj_id, np.asarray(logits, np.float32), score=0.9)


def test_label_image_resolves_overlaps_by_logit_and_keeps_background():
    a = _obj(3, [[2.0, 1.0, -1.0], [-5.0, 4.0, 1.0]])
    b = _obj(7, [[1.0, 3.0, -2.0], [-1.0, 4.0, -1.0]])
    result = FrameResult(frame_index=0, image_size=(2, 3), objects={7: b, 3: a})
    labels = result.label_image()
    assert labels.dtype == np.uint16
    # pixel (1, 1): a tie at 4.0 goes to the lower id
    assert labels.tolist() == [[3, 7, 0], [0, 3, 3]]
    assert result.label_image(np.uint8).dtype == np.uint8
    assert FrameResult(0, (2, 3), {}).label_image().tolist() == [[0, 0, 0], [0, 0, 0]]


def test_object_result_box_and_visibility():
    obj = _obj(1, [[-1, -1, -1], [-1, 2, 3], [-1, 1, -1]])
    assert obj.visible and obj.box == (1, 1, 2, 2)
    empty = _obj(2, np.full((3, 3), -1.0))
    assert not empty.visible and empty.box is None


def test_covers_reads_the_mask_at_a_pixel():
    obj = _obj(1, [[-1, -1, -1], [-1, 2, 3], [-1, 1, -1]])
    for y in range(3):
        for x in range(3):
            assert obj.covers(x, y) == bool(obj.mask[y, x]), (x, y)
    assert not _obj(2, np.full((3, 3), -1.0)).covers(1, 1)


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4, 4), np.uint8), "(H, W, 3)"),
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_frames_are_refused(frame, message):
    with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_frame(frame)


def test_size_change_mid_stream_is_refused():
    with pytest.raises(FrameError, match="size changed"):
        check_frame(np.zeros((4, 5, 3), np.uint8), expected_size=(4, 4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "at least one"),
        ({"points": [[5, 20]]}, "outside"),
        ({"points": [[-0.5, 1]]}, "outside"),
        ({"points": [[float("nan"), 1]]}, "NaN"),
        ({"points": [[1, 2, 3]]}, "pairs"),
        ({"points": [[1, 2]], "labels": [1, 0]}, "1 points but 2 labels"),
        ({"points": [[1, 2]], "labels": [2]}, "labels must be"),
        ({"box": [1, 2, 3]}, "box must be"),
        ({"box": [5, 5, 2, 8]}, "inverted"),
        ({"box": [20, 20, 30, 30]}, "outside"),
        ({"mask": np.ones((3, 3))}, "shape"),
        ({"mask": np.zeros((10, 16))}, "empty"),
        ({"mask": np.full((10, 16), np.nan)}, "NaN"),
        ({"mask": np.ones((10, 16)), "points": [[1, 1]]}, "cannot be combined"),
    ],
)
def test_bad_prompts_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(PromptError, match=message):
        check_prompt((10, 16), **kwargs)


def test_good_prompt_is_normalised():
    pts, labels, box, mask = check_prompt((10, 16), points=[[1, 2], [3.5, 4]], labels=[1, 0], box=[-3, 1, 40, 9])
    assert pts.dtype == np.float32 and pts.shape == (2, 2)
    assert labels.tolist() == [1, 0]
    assert box.tolist() == [0, 1, 16, 9]  # clipped to the image
    assert mask is None
    *_, mask = check_prompt((10, 16), mask=np.eye(10, 16, dtype=np.uint8))
    assert mask.dtype == bool and mask.sum() == 10


@pytest.mark.parametrize("bad", [0, -1, 65536, 1.5, "3", True, None])
def test_object_ids_must_be_positive_16_bit_integers(bad):
    with pytest.raises(PromptError, match="object id"):
        check_obj_id(bad)
    assert check_obj_id(np.int64(5)) == 5
