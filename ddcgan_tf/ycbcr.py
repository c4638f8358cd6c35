"""Colour visible images: fuse the luminance, keep the visible image's chroma (YCbCr).

DDcGAN fuses grey images (TNO's visible images are grey). A colour visible image is fused the
way colour vis-ir fusion is usually done: its luminance Y (ITU-R BT.601, the weights
`images.read_grey` already uses, so the generator sees exactly what it sees without colour) is
fused with the infrared image, and the visible image's chroma (Cb, Cr) is kept:

  Y  = 0.299 R + 0.587 G + 0.114 B      Cb = 0.5 + (B - Y) / 1.772      Cr = 0.5 + (R - Y) / 1.402

(JPEG's full-range YCbCr, in [0, 1] units). Keeping Cb and Cr while Y becomes the fused F adds
F - Y to every channel, which can leave [0, 1]; such pixels lose saturation (Cb, Cr scaled
towards 0.5, the hue in the CbCr plane kept) rather than being clipped per channel, so the
written image's luminance is F wherever F is in [0, 1] (`ihs.to_gamut`, as for PET colour).
"""
import numpy as np

from ddcgan_tf.images import LUMA_WEIGHTS, luminance  # noqa: F401 (luminance: part of this module's API)
from ddcgan_tf.ihs import to_gamut

_KR, _KB = LUMA_WEIGHTS[0], LUMA_WEIGHTS[2]
# rows: Y, Cb - 0.5, Cr - 0.5 as linear functions of (R, G, B)
YCBCR_MATRIX = np.array([LUMA_WEIGHTS,
                         (np.array([0.0, 0.0, 1.0]) - LUMA_WEIGHTS) / (2.0 * (1.0 - _KB)),
                         (np.array([1.0, 0.0, 0.0]) - LUMA_WEIGHTS) / (2.0 * (1.0 - _KR))])
_INVERSE = np.linalg.inv(YCBCR_MATRIX)


def rgb_to_ycbcr(rgb):
    """(..., 3) RGB in [0, 1] -> (Y, Cb, Cr), each (...), Y in [0, 1] and Cb, Cr around 0.5."""
    out = np.asarray(rgb, np.float64) @ YCBCR_MATRIX.T
    return out[..., 0], out[..., 1] + 0.5, out[..., 2] + 0.5


def ycbcr_to_rgb(y, cb, cr):
    """Exact inverse of rgb_to_ycbcr -> (..., 3) (not clipped)."""
    return np.stack([y, np.asarray(cb) - 0.5, np.asarray(cr) - 0.5], axis=-1) @ _INVERSE.T


def keep_chroma(fused, rgb):
    """Fused luminance (H x W, [0, 1]) + the visible image's colour (H x W x 3) -> H x W x 3 RGB
    in [0, 1] with Y = fused (clipped to [0, 1]) and the visible Cb, Cr, desaturated only where
    the result would leave the gamut (module docstring)."""
    rgb = np.asarray(rgb, np.float64)
    chroma = rgb - (rgb @ LUMA_WEIGHTS)[..., None]  # (Cb, Cr) as RGB: zero luminance
    return to_gamut(fused, chroma).astype(np.float32)
