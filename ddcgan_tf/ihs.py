"""The linear IHS transform of the paper's PET-MRI application (Sec. IV-D) and the colour path.

  I  = (R + G + B) / sqrt(3)      V1 = (R + G - 2B) / sqrt(6)      V2 = (R - G) / sqrt(2)
  H  = atan2(V1, V2)              S  = sqrt(V1^2 + V2^2)

The three rows are orthonormal, so the inverse is the transpose (exact up to rounding).

Scale of I: for RGB in [0, 1], I lies in [0, sqrt(3)]. The generator sees I / sqrt(3) (the mean
of R, G, B), which lies in [0, 1] like any grey image; the fused output F in [0, 1] becomes the
new intensity I' = sqrt(3) * F.

Colour path (`fuse_pet_mri`): colour PET (h x w x 3) -> IHS -> I / sqrt(3) is fused with the MRI
(4h x 4w) by the generator -> hue and saturation are upsampled 4x bicubically -> RGB, brought into
[0, 1] by `to_gamut` (saturation is reduced where needed; hue and intensity are kept). S is upsampled as is; H is taken from the bicubically upsampled chroma (V1, V2) rather
than by interpolating the angle, which would sweep through every hue where H wraps from pi to -pi.
"""
import numpy as np
import scipy.ndimage

from ddcgan_tf import images
from ddcgan_tf.errors import InputError
from ddcgan_tf.patches import check_sizes

SQRT3 = np.sqrt(3.0)
# rows: I, V1, V2
IHS_MATRIX = np.array([[1, 1, 1] / np.sqrt(3.0),
                       [1, 1, -2] / np.sqrt(6.0),
                       [1, -1, 0] / np.sqrt(2.0)])


def rgb_to_ihs(rgb):
    """(..., 3) RGB -> (I, V1, V2), each (...)."""
    out = np.asarray(rgb, np.float64) @ IHS_MATRIX.T
    return out[..., 0], out[..., 1], out[..., 2]


def ihs_to_rgb(i, v1, v2):
    """Exact inverse of rgb_to_ihs -> (..., 3) (not clipped)."""
    return np.stack([i, v1, v2], axis=-1) @ IHS_MATRIX


def hue_saturation(v1, v2):
    """H = atan2(V1, V2), S = sqrt(V1^2 + V2^2)."""
    return np.arctan2(v1, v2), np.hypot(v1, v2)


def chroma(h, s):
    """(V1, V2) from hue and saturation."""
    return s * np.sin(h), s * np.cos(h)


def intensity(rgb):
    """The generator's view of a colour image: I / sqrt(3) = mean of R, G, B, in [0, 1]."""
    return rgb_to_ihs(rgb)[0] / SQRT3


def read_pet_intensity(path):
    """PET file -> I / sqrt(3) in [0, 1]: the IHS intensity of a colour PET, or a grey PET as is."""
    return intensity(images.read_rgb(path)).astype(np.float32)


def upsample(channel, shape):
    """Bicubic (order-3 spline) resize of one channel to exactly `shape`."""
    factors = (shape[0] / channel.shape[0], shape[1] / channel.shape[1])
    out = scipy.ndimage.zoom(np.asarray(channel, np.float64), factors, order=3, mode="nearest")
    return out[:shape[0], :shape[1]]


def fuse_pet_mri(fuser, mri, pet, mri_name="MRI", pet_name="PET"):
    """MRI (H x W grey) + PET (H/4 x W/4, RGB or grey) -> fused (H x W x 3 RGB, or H x W grey).

    A grey PET (2-D array, or 3 equal channels) gives a grey output.
    """
    mri = images.grey_array(mri, mri_name)
    pet = images.to_unit_float(pet, pet_name)
    if pet.ndim == 3 and pet.shape[2] in (1, 4):  # grey with a channel axis; RGBA: alpha dropped
        pet = pet[..., 0] if pet.shape[2] == 1 else pet[..., :3]
    if not (pet.ndim == 2 or (pet.ndim == 3 and pet.shape[2] == 3)):
        raise InputError(pet_name, f"is an array of shape {pet.shape}; expected a grey H x W or RGB H x W x 3 PET")
    # sizes first, with advice that fits this mode (a full-size colour PET slice is common)
    check_sizes(mri.shape, pet.shape, fuser.scale, mri_name, pet_name, vis_kind="MRI", resize_hint=False)
    colour = pet.ndim == 3 and not (np.allclose(pet[..., 0], pet[..., 1]) and np.allclose(pet[..., 1], pet[..., 2]))
    pet_i = intensity(pet) if pet.ndim == 3 else pet
    fused = fuser(mri, pet_i.astype(np.float32), vis_name=mri_name, ir_name=pet_name)
    if not colour:
        return fused
    _, v1, v2 = rgb_to_ihs(pet)
    h, s = hue_saturation(v1, v2)
    s_up = np.maximum(upsample(s, mri.shape), 0.0)
    v1_up, v2_up = upsample(v1, mri.shape), upsample(v2, mri.shape)
    h_up = np.arctan2(v1_up, v2_up)  # hue of the interpolated chroma, see the module docstring
    return to_gamut(fused, ihs_to_rgb(np.zeros_like(s_up), *chroma(h_up, s_up))).astype(np.float32)


def to_gamut(mean, colour):
    """RGB = mean + t * colour in [0, 1], with the largest t <= 1 per pixel.

    `mean` is the achromatic part (I / sqrt(3) here, Y in ddcgan_tf.ycbcr; clipped to [0, 1])
    and `colour` the chroma part of RGB, whose mean (here) or luminance (ycbcr) is 0, so any t
    keeps it. Out-of-range pixels lose saturation but keep their hue and intensity, unlike
    per-channel clipping, which shifts the hue.
    """
    m = np.clip(np.asarray(mean, np.float64), 0.0, 1.0)[..., None]
    c = np.asarray(colour, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(c > 0, (1.0 - m) / c, np.where(c < 0, m / -c, np.inf))
    t = np.clip(room.min(axis=-1, keepdims=True), 0.0, 1.0)
    return np.clip(m + t * c, 0.0, 1.0)
