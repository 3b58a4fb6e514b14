"""numpy/Pillow pre- and postprocessing equal their torch counterparts in the reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fssam2_export.reference import image_tensor, mask_tensor
from runtime.engine.image import load_image, preprocess_image, resize_bilinear, resize_mask


@pytest.mark.parametrize(
    "src,dst", [((64, 64), (256, 256)), ((64, 64), (240, 333)), ((256, 256), (97, 1000)), ((5, 7), (5, 7))]
)
@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_matches_torch(src, dst, align_corners):
    x = np.random.default_rng(0).normal(size=src).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x)[None, None], dst, mode="bilinear", align_corners=align_corners)[0, 0]
    # torch blends the four taps at once, this is separable: rounding differs by ~1e-5 at most
    np.testing.assert_allclose(resize_bilinear(x, dst, align_corners), expected.numpy(), atol=5e-5)


@pytest.mark.parametrize("hw", [(240, 320), (333, 97), (1000, 1000), (256, 256), (31, 64)])
def test_mask_resize_matches_torch_nearest(hw):
    m = np.random.default_rng(1).random(hw) > 0.5
    expected = mask_tensor(m, 256)[0, 0].numpy() > 0
    np.testing.assert_array_equal(resize_mask(m, 256), expected)


def test_preprocess_matches_reference(episode):
    rgb = load_image(episode.query)
    np.testing.assert_allclose(
        preprocess_image(rgb, 256, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        image_tensor(rgb, 256).numpy(),
        atol=1e-6,
    )


def test_files_are_read_upright_by_their_exif_orientation(tmp_path):
    """A phone stores pixels sideways and an EXIF Orientation tag (1-8): images and masks read from files (the
    engine's loaders, and the guard that `fssam2 label` / `fssam2 serve` decode untrusted bytes with) come out the
    way they are shown."""
    from image_fakes import blocky_grey, oriented_jpeg

    from runtime.apps.guard import ImageLimits, decode_image, decode_mask
    from runtime.engine.image import load_mask

    rng = np.random.default_rng(2)
    upright = blocky_grey(rng.integers(0, 256, (40, 72, 3), dtype=np.uint8))  # not square: turns show
    rgb = np.repeat(upright[..., None], 3, axis=2)
    for o in range(1, 9):
        data = oriented_jpeg(upright, o)
        (tmp_path / f"{o}.jpg").write_bytes(data)
        np.testing.assert_array_equal(load_image(tmp_path / f"{o}.jpg"), rgb, err_msg=f"orientation {o}")
        np.testing.assert_array_equal(load_mask(tmp_path / f"{o}.jpg"), upright != 0, err_msg=f"orientation {o}")
        np.testing.assert_array_equal(decode_image(data, "q", ImageLimits()), rgb, err_msg=f"orientation {o}")
        np.testing.assert_array_equal(decode_mask(data, "m", ImageLimits()), upright != 0, err_msg=f"orientation {o}")
