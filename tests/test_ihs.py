"""The IHS transform and the PET-MRI colour path (issue: PET-MRI colour fusion)."""
import os

import h5py
import imageio.v3 as iio
import numpy as np
import pytest

from ddcgan_tf.errors import InputError
from ddcgan_tf.fuse import Fuser
from ddcgan_tf.generator import Generator
from ddcgan_tf.ihs import (SQRT3, chroma, fuse_pet_mri, hue_saturation, ihs_to_rgb, intensity,
                           read_pet_intensity, rgb_to_ihs, upsample)
from ddcgan_tf.patches import build_patch_set

from conftest import shared_path


@pytest.fixture(scope="module")
def fuser():
    g = Generator()
    g.build()
    return Fuser(g)


def test_round_trip_through_ihs_and_hue_saturation():
    rgb = np.random.default_rng(0).random((40, 30, 3))
    i, v1, v2 = rgb_to_ihs(rgb)
    assert np.abs(ihs_to_rgb(i, v1, v2) - rgb).max() < 1e-6
    h, s = hue_saturation(v1, v2)
    assert np.abs(ihs_to_rgb(i, *chroma(h, s)) - rgb).max() < 1e-6
    np.testing.assert_allclose(i, rgb.sum(-1) / SQRT3)
    np.testing.assert_allclose(intensity(rgb), rgb.mean(-1))


def test_grey_pixels_have_no_saturation():
    grey = np.full((4, 4, 3), 0.4)
    _, v1, v2 = rgb_to_ihs(grey)
    assert np.abs(hue_saturation(v1, v2)[1]).max() < 1e-12


def ramp_fuser(mri, pet_i, **names):
    """A stand-in generator: fused intensity rising from 0.02 to 0.98 across the image.

    Deterministic, and it reaches the dark and bright ends where the colour must be brought
    into gamut (a randomly initialised generator reaches them only by chance).
    """
    return np.broadcast_to(np.linspace(0.02, 0.98, mri.shape[1], dtype=np.float32), mri.shape)


ramp_fuser.scale = 4  # fuse_pet_mri checks sizes at the fuser's scale


def test_pure_hue_pet_keeps_its_hue_after_fusion_with_a_flat_mri():
    for colour in ([0.9, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.9]):
        pet = np.broadcast_to(np.array(colour, np.float32), (16, 16, 3))
        mri = np.full((64, 64), 0.5, np.float32)
        out = fuse_pet_mri(ramp_fuser, mri, pet)
        assert out.shape == (64, 64, 3) and out.min() >= 0 and out.max() <= 1
        np.testing.assert_allclose(intensity(out), ramp_fuser(mri, None), atol=1e-6)
        h_in = hue_saturation(*rgb_to_ihs(np.array(colour))[1:])[0]
        h_out, s_out = hue_saturation(*rgb_to_ihs(out.astype(np.float64))[1:])
        assert np.all(s_out > 1e-3)
        np.testing.assert_allclose(h_out, h_in, atol=1e-3)


def test_where_the_upsampled_saturation_undershoots_the_output_stays_grey():
    """The bicubic saturation rings below zero next to a coloured lesion on grey tissue; a
    negative saturation would paint those pixels (up to 15/255 here) with the flipped hue, a
    halo of colour the PET does not have. They stay grey."""
    def flat(mri, pet_i, **names):
        return np.full(mri.shape, 0.5, np.float32)

    flat.scale = 4
    pet = np.full((16, 16, 3), 0.4, np.float32)
    pet[6:10, 6:10] = [0.9, 0.1, 0.1]
    out = fuse_pet_mri(flat, np.full((64, 64), 0.5, np.float32), pet)
    s_up = upsample(hue_saturation(*rgb_to_ihs(pet.astype(np.float64))[1:])[1], (64, 64))
    undershoot = s_up < -1e-3
    assert undershoot.sum() > 500  # the ring is there
    tint = np.abs(out - out.mean(axis=-1, keepdims=True)).max(axis=-1)
    assert tint[undershoot].max() < 1e-6
    assert tint[26:38, 26:38].min() > 0.3  # the lesion keeps its colour


def test_hue_is_not_interpolated_across_its_wrap():
    """Two PET halves whose hues are +3.10 and -3.10 rad (0.08 apart across +-pi): upsampling
    the hue angle itself would sweep through 0 (the opposite colour) at the seam; the chroma
    (V1, V2) is upsampled instead, so every output pixel keeps a hue near +-pi."""
    pet = np.empty((16, 16, 3), np.float32)
    pet[:, :8], pet[:, 8:] = [0.2, 0.8, 0.48], [0.2, 0.8, 0.52]
    h_in = hue_saturation(*rgb_to_ihs(pet.astype(np.float64))[1:])[0]
    assert np.abs(h_in).min() > np.pi - 0.05 and h_in.max() > 3 and h_in.min() < -3  # both sides
    out = fuse_pet_mri(ramp_fuser, np.full((64, 64), 0.5, np.float32), pet)
    h_out, s_out = hue_saturation(*rgb_to_ihs(out.astype(np.float64))[1:])
    coloured = s_out > 1e-3
    assert coloured.mean() > 0.9
    assert np.abs(h_out[coloured]).min() > np.pi - 0.1


def test_grey_pet_gives_a_grey_output(fuser):
    pet = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    out = fuse_pet_mri(fuser, np.full((64, 64), 0.5, np.float32), pet)
    assert out.shape == (64, 64)
    # three equal channels count as grey too
    out3 = fuse_pet_mri(fuser, np.full((64, 64), 0.5, np.float32), np.repeat(pet[..., None], 3, -1))
    np.testing.assert_allclose(out3, out, atol=1e-6)


def test_pet_and_mri_arrays_are_read_as_images_and_bad_ones_refused(fuser):
    """uint8 arrays (iio.imread) are scaled as files are, an RGBA PET loses its alpha, and a
    PET of the MRI's size (the Harvard colour slices are 256x256) gets advice this mode can
    follow (it has no --resize)."""
    rng = np.random.default_rng(4)
    mri8, pet8 = rng.integers(0, 256, (64, 64), np.uint8), rng.integers(0, 256, (16, 16, 3), np.uint8)
    want = fuse_pet_mri(fuser, mri8 / 255.0, pet8 / 255.0)
    np.testing.assert_array_equal(fuse_pet_mri(fuser, mri8, pet8), want)
    rgba = np.concatenate([pet8, np.full((16, 16, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(fuse_pet_mri(fuser, mri8, rgba), want)
    with pytest.raises(InputError, match="must be 16x16 \\(1/4 of the 64x64 MRI; resample it first\\)$"):
        fuse_pet_mri(fuser, mri8, rng.random((64, 64, 3)), pet_name="pet.png")
    with pytest.raises(InputError, match="expected a grey H x W or RGB H x W x 3 PET"):
        fuse_pet_mri(fuser, mri8, rng.random((16, 16, 2)))
    with pytest.raises(InputError, match="must lie in"):
        fuse_pet_mri(fuser, mri8 * 1.0, pet8 / 255.0)


def test_intensity_is_fused_at_the_generator_scale(fuser):
    pet = np.random.default_rng(2).random((16, 16, 3)).astype(np.float32)
    mri = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    out = fuse_pet_mri(fuser, mri, pet)
    fused_i = fuser(mri, intensity(pet).astype(np.float32))
    # where nothing was clipped, the output's I / sqrt(3) is exactly the generator's output
    unclipped = np.all((out > 0) & (out < 1), axis=-1)
    np.testing.assert_allclose(intensity(out.astype(np.float64))[unclipped], fused_i[unclipped], atol=1e-5)


def test_pet_mri_patch_set_from_colour_pet(tmp_path):
    mri_dir, pet_dir = tmp_path / "mri", tmp_path / "pet"
    mri_dir.mkdir()
    pet_dir.mkdir()
    rng = np.random.default_rng(0)
    iio.imwrite(str(mri_dir / "1.png"), (rng.random((64, 64)) * 255).astype(np.uint8))
    pet = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    iio.imwrite(str(pet_dir / "1.png"), pet)
    out = str(tmp_path / "pet.h5")
    build_patch_set(str(mri_dir), str(pet_dir), out, patch=32, stride=16, scale=4,
                    mode="pet-mri", read_ir=read_pet_intensity, log=lambda *_: None)
    with h5py.File(out, "r") as f:
        assert f["vis"].shape == (9, 32, 32, 1) and f["ir"].shape == (9, 8, 8, 1)
        np.testing.assert_allclose(f["ir"][0, ..., 0], pet[:8, :8].mean(-1) / 255.0, atol=1e-6)
        assert f.attrs["mode"] == "pet-mri"


def test_real_colour_pet_slice_is_fused_in_colour():
    """With the shipped pet-mri weights (an untrained generator's output can sit at 0 or 1, where
    no colour fits the gamut: this test was flaky with one)."""
    from ddcgan_tf.checkpoint import load_generator
    from ddcgan_tf.shipped import default_checkpoint

    fuser = Fuser(load_generator(default_checkpoint("pet-mri")))
    path = os.path.join(shared_path("medical", "pet_rgb"), "015.png")
    pet_full = iio.imread(path)[..., :3] / 255.0
    pet = pet_full[::4, ::4].astype(np.float32)
    mri = np.asarray(intensity(pet_full), np.float32)  # an MRI-like grey image of the same slice
    out = fuse_pet_mri(fuser, mri, pet)
    assert out.shape == (256, 256, 3)
    _, s = hue_saturation(*rgb_to_ihs(out.astype(np.float64))[1:])
    assert s.max() > 0.1  # colour survives


def test_size_errors_name_the_image_at_fault():
    """A PET of the wrong size names the PET, an MRI too small for the network names the MRI."""
    with pytest.raises(InputError, match=r"^pet\.png: is 32x32 but must be 16x16 \(1/4 of the 64x64 MRI"):
        fuse_pet_mri(ramp_fuser, np.zeros((64, 64), np.float32), np.zeros((32, 32, 3), np.float32),
                     mri_name="mri.png", pet_name="pet.png")
    with pytest.raises(InputError, match=r"^mri\.png: is 4x4; the network needs at least 8x8$"):
        fuse_pet_mri(ramp_fuser, np.zeros((4, 4), np.float32), np.zeros((1, 1, 3), np.float32),
                     mri_name="mri.png", pet_name="pet.png")
