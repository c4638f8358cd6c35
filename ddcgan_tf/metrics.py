"""Fusion-quality metrics for visible/infrared (and MRI/PET) image fusion.

Pure numpy/scipy, vectorised, float64. Every metric function takes grey images on the
8-bit scale 0..255 (float or integer arrays, H x W). :func:`evaluate_triple` is the
entry point for images as :func:`ddcgan_tf.images.read_grey` returns them (floats in [0, 1]);
it scales them by 255 and upsamples low-resolution sources to the fused size first.

Conventions
-----------
The literature reports these metrics with conflicting conventions; two are offered
(``convention=``):

``"cddfuse"`` (default; the table of the product issue)
    The numpy definitions popularised by the CDDFuse evaluation code for EN, SD, SF, AG,
    SCD, VIF, Qabf and CC, with these choices: MI in bits, MI(F,A) + MI(F,B) on 256 x 256
    joint histograms of the integer grey levels; SSIM, MS-SSIM and CC *averaged* over the
    two sources; PSNR = 10 log10(255^2 / MSE) with MSE = (MSE(F,A) + MSE(F,B)) / 2.
    (CDDFuse's own Evaluator differs on three points: its MI is in nats, its SSIM is the
    sum of two scikit-image SSIMs with the default 7 x 7 uniform window, and its PSNR peak
    is max(F) instead of 255. Its numbers are therefore not directly comparable.)

``"vifb"`` (the VIFB MATLAB toolbox, Zhang et al., CVPRW 2020)
    Reproduces VIFB for the metrics VIFB has: EN bins floor(F); SF divides both squared
    difference sums by M*N; AG divides the gradient sum by (M-1)(N-1); MI in nats on
    per-image min-max normalised images (MI(F,A) + MI(F,B)); SSIM *summed* over the two
    sources; PSNR = 10 log10(255^2 / ((e_A + e_B) / 2)) with VIFB's error term
    e_X = sqrt(sum((X - F)^2)) / (M*N) (a root of the sum, not a mean square: VIFB's
    metricsPsnr.m; values come out near 60 dB). SD and Qabf are the same in both. Metrics
    VIFB lacks (SCD, VIF, CC, Nabf, MS-SSIM) keep the default definitions (CC averaged).

Both conventions: sums/means "over the two sources" treat F against A and F against B with
the same formula; VIF is summed (VIF(A,F) + VIF(B,F)), SCD is a sum by definition.
"""
import math

import numpy as np
from scipy import ndimage

from ddcgan_tf.errors import InputError

CONVENTIONS = ("cddfuse", "vifb")
DEFAULT_CONVENTION = "cddfuse"
METRIC_NAMES = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "PSNR", "Nabf", "MS-SSIM")
LOWRES_NAMES = ("PSNR_lr", "SSIM_lr")

CONVENTION_NOTES = {
    "cddfuse": ("grey 0..255; MI in bits, MI(F,A)+MI(F,B); SSIM, MS-SSIM and CC averaged over the "
                "two sources; VIF summed; PSNR = 10 log10(255^2 / mean(MSE(F,A), MSE(F,B)))"),
    "vifb": ("VIFB toolbox: grey 0..255; MI in nats on min-max normalised images, MI(F,A)+MI(F,B); "
             "SSIM summed over the two sources; CC and MS-SSIM averaged; VIF summed; "
             "PSNR = 10 log10(255^2 / ((e_A+e_B)/2)) with e_X = sqrt(sum((X-F)^2))/(M*N); "
             "EN on floor(F); SF and AG normalised as in VIFB"),
}

# SSIM (Wang et al. 2004)
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11 x 11 window
SSIM_K1, SSIM_K2, SSIM_L = 0.01, 0.03, 255.0
# MS-SSIM (Wang, Simoncelli & Bovik 2003)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Qabf (Xydeas & Petrovic 2000)
QABF_TG, QABF_KG, QABF_DG = 0.9994, -15.0, 0.5
QABF_TA, QABF_KA, QABF_DA = 0.9879, -22.0, 0.8
# Nabf (Petrovic's parameters as used by B. K. Shreyamsha Kumar's objective_fusion_perform_fn)
NABF_TD, NABF_WT_MIN, NABF_LG = 2.0, 0.001, 1.5
NABF_NRG, NABF_KG, NABF_SG = 0.9999, 19.0, 0.5
NABF_NRA, NABF_KA, NABF_SA = 0.9995, 22.0, 0.5
# VIF (Sheikh & Bovik 2006, pixel domain)
VIF_SIGMA_NSQ = 2.0
VIF_EPS = 1e-10

_SMOOTH = np.array([1.0, 2.0, 1.0])
_DIFF = np.array([-1.0, 0.0, 1.0])
_DIFF_REV = np.array([1.0, 0.0, -1.0])


# ----------------------------------------------------------------------------- helpers

def _check_convention(convention):
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    return convention


def _f64(img):
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {a.shape}")
    return a


def _same_shape(*images):
    arrays = [_f64(x) for x in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images must have the same shape, got {sorted(shapes)}")
    return arrays


def _levels(img):
    """0..255 grey image -> integer levels 0..255 (round to nearest, clip)."""
    return np.clip(np.rint(img), 0, 255).astype(np.intp)


def _entropy_of_counts(counts, log):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * log(p)).sum())


def pearson(x, y):
    """Pearson correlation coefficient of two arrays (nan when one is constant)."""
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / den if den > 0 else float("nan")


def _gauss1d(radius, sigma):
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return w / w.sum()


def _filter_valid(img, w):
    """Separable correlation with the 1-D kernel w on both axes, 'valid' part only."""
    r = (len(w) - 1) // 2
    h, wd = img.shape
    if h <= 2 * r or wd <= 2 * r:
        return np.zeros((max(h - 2 * r, 0), max(wd - 2 * r, 0)))
    out = ndimage.correlate1d(img, w, axis=0, mode="constant")[r:h - r]
    return ndimage.correlate1d(out, w, axis=1, mode="constant")[:, r:wd - r]


def _sobel_zero(img):
    """MATLAB conv2(img, h, 'same') (zero padding) with h3 = [1 2 1]' * [-1 0 1] -> sx and
    h1 = [1 0 -1]' * [1 2 1] -> sy, as separable convolutions."""
    conv = ndimage.convolve1d
    sx = conv(conv(img, _DIFF, axis=1, mode="constant"), _SMOOTH, axis=0, mode="constant")
    sy = conv(conv(img, _DIFF_REV, axis=0, mode="constant"), _SMOOTH, axis=1, mode="constant")
    return sx, sy


def _ratio(g1, g2):
    """min(g1, g2) / max(g1, g2), 0 where both are 0."""
    lo, hi = np.minimum(g1, g2), np.maximum(g1, g2)
    return np.divide(lo, hi, out=np.zeros_like(hi), where=hi > 0)


# ----------------------------------------------------------------------------- no-reference

def EN(fused, convention=DEFAULT_CONVENTION):
    """Entropy (Shannon) of the 256-bin grey-level histogram of F, in bits.

    Roberts et al., J. Appl. Remote Sens. 2008. "cddfuse" bins round(F); "vifb" bins
    floor(F) (VIFB metricsEntropy.m). Constant image -> 0; two equally frequent levels -> 1.
    """
    f = _f64(fused)
    if _check_convention(convention) == "vifb":
        q = np.clip(np.floor(f), 0, 255).astype(np.intp)
    else:
        q = _levels(f)
    return _entropy_of_counts(np.bincount(q.ravel(), minlength=256).astype(np.float64), np.log2)


def SD(fused):
    """Standard deviation of F (population form, divides by M*N); same in both conventions."""
    return float(np.std(_f64(fused)))


def SF(fused, convention=DEFAULT_CONVENTION):
    """Spatial frequency sqrt(RF^2 + CF^2) (Eskicioglu & Fisher 1995).

    RF^2 / CF^2 are the squared horizontal / vertical first differences: "cddfuse" takes their
    means (over M(N-1) and (M-1)N terms); "vifb" divides both sums by M*N (metricsSpatial_frequency.m).
    """
    f = _f64(fused)
    dx2 = np.square(np.diff(f, axis=1))
    dy2 = np.square(np.diff(f, axis=0))
    if _check_convention(convention) == "vifb":
        return float(math.sqrt((dx2.sum() + dy2.sum()) / f.size))
    rf2 = dx2.mean() if dx2.size else 0.0
    cf2 = dy2.mean() if dy2.size else 0.0
    return float(math.sqrt(rf2 + cf2))


def AG(fused, convention=DEFAULT_CONVENTION):
    """Average gradient: mean of sqrt((Gx^2 + Gy^2) / 2) (Cui et al., Opt. Commun. 2015).

    Gx, Gy as numpy.gradient / MATLAB gradient (central differences inside, one-sided at the
    borders). "cddfuse" averages over all M*N pixels; "vifb" divides the sum by (M-1)(N-1)
    (metricsAvg_gradient.m). Needs at least 2 x 2 pixels.
    """
    f = _f64(fused)
    if min(f.shape) < 2:
        raise ValueError("AG needs an image of at least 2 x 2 pixels")
    gy, gx = np.gradient(f)
    s = np.sqrt((gx * gx + gy * gy) / 2.0)
    if _check_convention(convention) == "vifb":
        return float(s.sum() / ((f.shape[0] - 1) * (f.shape[1] - 1)))
    return float(s.mean())


# ----------------------------------------------------------------------------- information

def _joint_mi(qa, qb, log):
    joint = np.bincount((qa * 256 + qb).ravel(), minlength=256 * 256).astype(np.float64)
    joint = joint.reshape(256, 256)
    return (_entropy_of_counts(joint.sum(axis=1), log) + _entropy_of_counts(joint.sum(axis=0), log)
            - _entropy_of_counts(joint.ravel(), log))


def _vifb_levels(img):
    lo, hi = float(img.min()), float(img.max())
    a = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.floor(a * 255.0 + 0.5).astype(np.intp)  # MATLAB int16(): round half away from zero


def mutual_information(x, y, convention=DEFAULT_CONVENTION):
    """MI(X, Y) = H(X) + H(Y) - H(X, Y) from the 256 x 256 joint grey-level histogram.

    "cddfuse": bins round(X), bits. "vifb": each image min-max normalised to 0..255 first,
    natural log (nats), as VIFB metricsMutinf.m.
    """
    a, b = _same_shape(x, y)
    if _check_convention(convention) == "vifb":
        return _joint_mi(_vifb_levels(a), _vifb_levels(b), np.log)
    return _joint_mi(_levels(a), _levels(b), np.log2)


def MI(fused, a, b, convention=DEFAULT_CONVENTION):
    """Fusion mutual information MI(F,A) + MI(F,B) (Qu, Zhang & Yan, Electron. Lett. 2002).

    Bits on round(.) grey levels for "cddfuse"; nats on min-max normalised images for "vifb".
    Symmetric in the order of the sources; MI(F, F, F) = 2 EN(F) (in bits).
    """
    return mutual_information(fused, a, convention) + mutual_information(fused, b, convention)


# ----------------------------------------------------------------------------- correlation

def SCD(fused, a, b):
    """Sum of the correlations of differences (Aslantas & Bendes, AEU 2015).

    SCD = r(F - B, A) + r(F - A, B), Pearson r. Range [-2, 2]; same in both conventions.
    """
    f, a, b = _same_shape(fused, a, b)
    return pearson(f - b, a) + pearson(f - a, b)


def CC(fused, a, b):
    """Correlation coefficient (r(F, A) + r(F, B)) / 2, Pearson r; averaged in both conventions."""
    f, a, b = _same_shape(fused, a, b)
    return (pearson(f, a) + pearson(f, b)) / 2.0


# ----------------------------------------------------------------------------- PSNR

def psnr(x, y, peak=255.0):
    """10 log10(peak^2 / MSE(x, y)) for one pair (inf for identical images)."""
    a, b = _same_shape(x, y)
    mse = float(np.mean(np.square(a - b)))
    return float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def PSNR(fused, a, b, convention=DEFAULT_CONVENTION):
    """Fusion PSNR (Jagalingam & Hegde, Aquatic Procedia 2015), peak 255.

    "cddfuse": 10 log10(255^2 / ((MSE(F,A) + MSE(F,B)) / 2)).
    "vifb": 10 log10(255^2 / ((e_A + e_B) / 2)) with VIFB's error term
    e_X = sqrt(sum((X - F)^2)) / (M*N) (metricsPsnr.m; not a mean squared error).
    """
    f, a, b = _same_shape(fused, a, b)
    if _check_convention(convention) == "vifb":
        err = (math.sqrt(float(np.square(a - f).sum())) + math.sqrt(float(np.square(b - f).sum()))) / (2.0 * f.size)
    else:
        err = (float(np.mean(np.square(a - f))) + float(np.mean(np.square(b - f)))) / 2.0
    return float("inf") if err == 0 else 10.0 * math.log10(255.0 ** 2 / err)


# ----------------------------------------------------------------------------- SSIM family

_SSIM_W = _gauss1d(SSIM_RADIUS, SSIM_SIGMA)


def _ssim_stats(x):
    """Window mean and window mean of x^2 (the per-image half of SSIM's filtering)."""
    return _filter_valid(x, _SSIM_W), _filter_valid(x * x, _SSIM_W)


def _ssim_parts(x, y, sx=None, sy=None):
    """Mean SSIM and mean contrast-structure term over the 'valid' 11 x 11 windows.

    sx, sy: optional _ssim_stats of x and y, so a fused image's filtering is shared by sources.
    """
    c1 = (SSIM_K1 * SSIM_L) ** 2
    c2 = (SSIM_K2 * SSIM_L) ** 2
    mx, ex2 = _ssim_stats(x) if sx is None else sx
    if mx.size == 0:
        return float("nan"), float("nan")
    my, ey2 = _ssim_stats(y) if sy is None else sy
    mx2, my2, mxy = mx * mx, my * my, mx * my
    cs = (2.0 * (_filter_valid(x * y, _SSIM_W) - mxy) + c2) / ((ex2 - mx2) + (ey2 - my2) + c2)
    s = (2.0 * mxy + c1) / (mx2 + my2 + c1) * cs
    return float(s.mean()), float(cs.mean())


def ssim(x, y):
    """SSIM of one pair (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004).

    11 x 11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, L 255, averaged over the 'valid'
    windows (Wang's ssim_index.m; equals scikit-image structural_similarity with
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255).
    nan for images smaller than 11 x 11.
    """
    a, b = _same_shape(x, y)
    return _ssim_parts(a, b)[0]


def _combine_ssim(convention, s_a, s_b):
    return s_a + s_b if _check_convention(convention) == "vifb" else (s_a + s_b) / 2.0


def SSIM(fused, a, b, convention=DEFAULT_CONVENTION):
    """Fusion SSIM: (SSIM(F,A) + SSIM(F,B)) / 2 for "cddfuse", SSIM(F,A) + SSIM(F,B) for "vifb"."""
    f, a, b = _same_shape(fused, a, b)
    sf = _ssim_stats(f)
    return _combine_ssim(convention, _ssim_parts(a, f, sy=sf)[0], _ssim_parts(b, f, sy=sf)[0])


def _halve(img):
    """MATLAB imfilter(img, ones(2)/4, 'symmetric') followed by (1:2:end, 1:2:end)."""
    if img.shape[0] % 2:
        img = np.vstack([img, img[-1:]])
    if img.shape[1] % 2:
        img = np.hstack([img, img[:, -1:]])
    return 0.25 * (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2])


def _ms_ssim_multi(sources, dist, weights=MS_SSIM_WEIGHTS, first=None):
    """MS-SSIM of each source against dist, sharing dist's pyramid; first: optional scale-1
    (ssim, cs) per source already computed."""
    out = [1.0] * len(sources)
    srcs = list(sources)
    for j, w in enumerate(weights):
        if j:
            srcs, dist = [_halve(x) for x in srcs], _halve(dist)
        sd = _ssim_stats(dist)
        for k, src in enumerate(srcs):
            s, cs = first[k] if (j == 0 and first is not None) else _ssim_parts(src, dist, sy=sd)
            if math.isnan(s) or math.isnan(out[k]):
                out[k] = float("nan")
                continue
            out[k] *= max(s if j == len(weights) - 1 else cs, 0.0) ** w
    return [float(v) for v in out]


def ms_ssim(x, y, weights=MS_SSIM_WEIGHTS):
    """Multi-scale SSIM of one pair (Wang, Simoncelli & Bovik, Asilomar 2003; Wang's msssim.m).

    Scale j uses the SSIM window above; images are 2 x 2 averaged and subsampled between
    scales; result = prod_{j<M} cs_j^w_j * ssim_M^w_M with the published 5 weights. Negative
    terms are clipped to 0 before the power (as pytorch-msssim) so the result is never nan
    for valid sizes. nan when the coarsest scale is smaller than 11 x 11 (176 px for 5 scales).
    """
    a, b = _same_shape(x, y)
    return _ms_ssim_multi([a], b, weights)[0]


def MS_SSIM(fused, a, b):
    """Fusion MS-SSIM: (MS-SSIM(A,F) + MS-SSIM(B,F)) / 2 in both conventions (symmetric in its pair)."""
    f, a, b = _same_shape(fused, a, b)
    return sum(_ms_ssim_multi([a, b], f)) / 2.0


# ----------------------------------------------------------------------------- VIF

def _vifp_multi(refs, dist):
    """VIFp of each reference against dist, sharing dist's filtering (see vifp)."""
    refs = list(refs)
    num = [0.0] * len(refs)
    den = [0.0] * len(refs)
    d = dist
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        w = _gauss1d((n - 1) // 2, n / 5.0)
        if scale > 1:
            refs = [_filter_valid(r, w)[::2, ::2] for r in refs]
            d = _filter_valid(d, w)[::2, ::2]
        mu2 = _filter_valid(d, w)
        if mu2.size == 0:
            break
        s2_full = np.maximum(_filter_valid(d * d, w) - mu2 * mu2, 0.0)
        low2 = s2_full < VIF_EPS
        for k, r in enumerate(refs):
            mu1 = _filter_valid(r, w)
            s1 = np.maximum(_filter_valid(r * r, w) - mu1 * mu1, 0.0)
            s12 = _filter_valid(r * d, w) - mu1 * mu2
            s2 = s2_full
            g = s12 / (s1 + VIF_EPS)
            sv = s2 - g * s12
            low1 = s1 < VIF_EPS
            g[low1] = 0.0
            sv[low1] = s2[low1]
            s1[low1] = 0.0
            g[low2] = 0.0
            sv[low2] = 0.0
            neg = g < 0
            sv[neg] = s2[neg]
            g[neg] = 0.0
            sv[sv <= VIF_EPS] = VIF_EPS
            num[k] += float(np.log10(1.0 + g * g * s1 / (sv + VIF_SIGMA_NSQ)).sum())
            den[k] += float(np.log10(1.0 + s1 / VIF_SIGMA_NSQ).sum())
    return [1.0 if dn == 0 else nm / dn for nm, dn in zip(num, den)]


def vifp(ref, dist):
    """Pixel-domain VIF of one pair, VIF(ref -> dist) (Sheikh & Bovik, IEEE TIP 2006; vifp_mscale.m).

    4 scales, Gaussian windows of N = 17, 9, 5, 3 taps (sd N/5), 'valid' filtering, 2x
    subsampling between scales, sigma_nsq = 2; vifp(x, x) = 1. Returns 1.0 when undefined
    (0/0, e.g. a constant reference), as the reference Python port does.
    """
    r, d = _same_shape(ref, dist)
    return _vifp_multi([r], d)[0]


def VIF(fused, a, b):
    """Fusion VIF = VIFp(A -> F) + VIFp(B -> F) (summed over sources, as VIFB-era papers and
    CDDFuse compute it); F = A = B gives 2."""
    f, a, b = _same_shape(fused, a, b)
    return sum(_vifp_multi([a, b], f))


# ----------------------------------------------------------------------------- edge based

def _qabf_edges(img):
    sx, sy = _sobel_zero(img)
    g = np.sqrt(sx * sx + sy * sy)
    alpha = np.full(img.shape, math.pi / 2)
    nz = sx != 0
    alpha[nz] = np.arctan(sy[nz] / sx[nz])
    return g, alpha


def _qabf_q(gs, as_, gf, af):
    G = _ratio(gs, gf)
    A = 1.0 - np.abs(as_ - af) / (math.pi / 2)
    return QABF_TG / (1.0 + np.exp(QABF_KG * (G - QABF_DG))) * QABF_TA / (1.0 + np.exp(QABF_KA * (A - QABF_DA)))


def Qabf(fused, a, b):
    """Edge-information transfer Q^{AB/F} (Xydeas & Petrovic, Electron. Lett. 2000).

    Sobel gradients (MATLAB conv2 'same', zero padding), orientation atan(sy/sx) (pi/2 where
    sx = 0), Tg 0.9994, kg -15, Dg 0.5, Ta 0.9879, ka -22, Da 0.8, weights g_A and g_B.
    Relative strength G = min(g_S, g_F) / max(g_S, g_F) (0 where both are 0); the VIFB/CDDFuse
    code sets G = g_F where g_S == g_F instead, which differs only on pixels with equal
    non-zero gradients. With these constants the maximum (F = A = B) is
    Tg/(1+e^{kg(1-Dg)}) * Ta/(1+e^{ka(1-Da)}) = 0.9748, not 1 (see QABF_MAX).
    """
    f, a, b = _same_shape(fused, a, b)
    gf, af = _qabf_edges(f)
    ga, aa = _qabf_edges(a)
    gb, ab = _qabf_edges(b)
    den = float((ga + gb).sum())
    if den == 0:
        return float("nan")
    return float((_qabf_q(ga, aa, gf, af) * ga + _qabf_q(gb, ab, gf, af) * gb).sum()) / den


QABF_MAX = (QABF_TG / (1.0 + math.exp(QABF_KG * (1.0 - QABF_DG)))
            * QABF_TA / (1.0 + math.exp(QABF_KA * (1.0 - QABF_DA))))


def _nabf_edges(img):
    """Kumar's sobel_fn: Sobel / 8 correlation on a mirror-extended image -> (g, alpha).

    Differences are taken before smoothing, so gradients that vanish by symmetry on the mirrored
    border are exactly 0 (the MATLAB loop leaves round-off there, whose sign decides atan's).
    """
    gv = ndimage.correlate1d(ndimage.correlate1d(img, _DIFF, axis=1, mode="mirror"), _SMOOTH, axis=0, mode="mirror")
    gh = ndimage.correlate1d(ndimage.correlate1d(img, _DIFF, axis=0, mode="mirror"), _SMOOTH, axis=1, mode="mirror")
    gv, gh = gv / 8.0, gh / 8.0
    g = np.sqrt(gv * gv + gh * gh)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.arctan(gv / gh)  # gh == 0, gv != 0 -> +-pi/2 as MATLAB atan(+-Inf)
    alpha[(gv == 0) & (gh == 0)] = 0.0
    return g, alpha


def Nabf(fused, a, b):
    """Modified fusion-artifact measure N^{AB/F}_m (B. K. Shreyamsha Kumar, SIViP 2013).

    As Kumar's objective_fusion_perform_fn.m (the analysis_nabf.m used by DenseFuse-era papers;
    VIFB itself has no Nabf): Sobel/8 on mirror-extended images, Nrg 0.9999, kg 19, sigma_g 0.5,
    Nra 0.9995, ka 22, sigma_a 0.5, Q = sqrt(Qg Qa), weights g^1.5 where g >= 2 else 0.001,
    artifacts where g_F > g_A and g_F > g_B:
    Nabf = sum(na * ((1 - Q_AF) w_A + (1 - Q_BF) w_B)) / sum(w_A + w_B). Lower is better;
    F = A = B gives 0.
    """
    f, a, b = _same_shape(fused, a, b)
    gf, af = _nabf_edges(f)
    terms = []
    for src in (a, b):
        gs, as_ = _nabf_edges(src)
        G = np.where((gs == 0) | (gf == 0), 0.0, _ratio(gs, gf))
        A = np.abs(np.abs(as_ - af) - math.pi / 2) * 2.0 / math.pi
        qg = NABF_NRG / (1.0 + np.exp(-NABF_KG * (G - NABF_SG)))
        qa = NABF_NRA / (1.0 + np.exp(-NABF_KA * (A - NABF_SA)))
        wt = np.where(gs >= NABF_TD, gs ** NABF_LG, NABF_WT_MIN)
        terms.append((gs, np.sqrt(qg * qa), wt))
    (ga, qaf, wa), (gb, qbf, wb) = terms
    na = (gf > ga) & (gf > gb)
    return float((na * ((1.0 - qaf) * wa + (1.0 - qbf) * wb)).sum() / (wa + wb).sum())


# ----------------------------------------------------------------------------- resampling

def upsample_bicubic(img, shape):
    """Bicubic upsampling to exactly `shape`: scipy.ndimage.zoom(order=3) with per-axis factors
    shape / img.shape (so non-multiple sizes still give exactly `shape`), zoom's defaults
    otherwise (corner-aligned grid). No clipping here; evaluate_triple clips to [0, 255]."""
    img = _f64(img)
    if img.shape == tuple(shape):
        return img.copy()
    factors = (shape[0] / img.shape[0], shape[1] / img.shape[1])
    out = ndimage.zoom(img, factors, order=3)
    if out.shape != tuple(shape):  # guard against rounding of shape * factor
        raise AssertionError(f"zoom produced {out.shape}, expected {tuple(shape)}")
    return out


def _area_matrix(n_in, n_out):
    """(n_out, n_in) matrix of area-overlap weights (rows sum to 1) for 1-D area resizing."""
    s = n_in / n_out
    lo = np.arange(n_out)[:, None] * s
    hi = lo + s
    k = np.arange(n_in)[None, :]
    return np.clip(np.minimum(hi, k + 1) - np.maximum(lo, k), 0.0, None) / s


def area_downsample(img, shape):
    """Area (box) resampling of img to a smaller `shape`: each output pixel is the mean of the
    input area it covers, fractional pixels weighted by overlap (exact block mean for multiples)."""
    img = _f64(img)
    return _area_matrix(img.shape[0], shape[0]) @ img @ _area_matrix(img.shape[1], shape[1]).T


def pool_to(img, shape, factor):
    """Fused image -> low-resolution grid: block mean over factor x factor blocks (remainder
    rows/columns cropped) when shape == img.shape // factor, otherwise area resampling."""
    img = _f64(img)
    f = int(round(factor))
    if abs(factor - f) < 1e-9 and f >= 1 and (img.shape[0] // f, img.shape[1] // f) == tuple(shape):
        h, w = shape
        return img[:h * f, :w * f].reshape(h, f, w, f).mean(axis=(1, 3))
    return area_downsample(img, shape)


# ----------------------------------------------------------------------------- entry points

def _to_255(img, where):
    """[0, 1] float image (as read_grey returns) or uint8 image -> float64 on 0..255.

    Values within 1e-3 of integers after scaling (8-bit files read as floats) are snapped to
    the integers so that histogram metrics see the original grey levels.
    """
    a = np.asarray(img)
    if a.ndim != 2:
        raise InputError(where, f"expected a 2-D grey image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64)
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(where, f"expected a float image in [0, 1] or uint8, got {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise InputError(where, "image contains NaN or Inf values")
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise InputError(where, f"float images must lie in [0, 1] (got [{a.min():.4g}, {a.max():.4g}]); "
                                "pass 0..255 data as uint8 or divide by 255")
    a = a * 255.0
    r = np.rint(a)
    if np.all(np.abs(a - r) < 1e-3):
        a = r
    return a


def prepare_sources(fused, vis, ir):
    """Scales the three images to 0..255 and upsamples smaller sources bicubically to the fused
    size (clipped to [0, 255]). Returns (f, a, b, upsampled) with upsampled a tuple of labels."""
    f = _to_255(fused, "fused image")
    out, upsampled = [], []
    for label, src in (("vis", vis), ("ir", ir)):
        s = _to_255(src, f"{label} image")
        if s.shape != f.shape:
            if s.shape[0] > f.shape[0] or s.shape[1] > f.shape[1]:
                raise InputError(f"{label} image", f"is {s.shape[0]}x{s.shape[1]}, larger than the fused "
                                                  f"image {f.shape[0]}x{f.shape[1]}")
            s = np.clip(upsample_bicubic(s, f.shape), 0.0, 255.0)
            upsampled.append(label)
        out.append(s)
    return f, out[0], out[1], tuple(upsampled)


def evaluate_triple(fused, vis, ir, convention=DEFAULT_CONVENTION):
    """All metrics for one fused image and its two sources -> dict ordered as METRIC_NAMES.

    Inputs are floats in [0, 1] (as read_grey returns; scaled by 255 here) or uint8 arrays.
    A source smaller than the fused image (IR at 1/4, PET at 64 x 64) is first upsampled
    bicubically to the fused size (scipy.ndimage.zoom order=3, per-axis factors, clipped to
    [0, 255]). A is the visible (or MRI) image, B the infrared (or PET) image.
    """
    _check_convention(convention)
    f, a, b, _ = prepare_sources(fused, vis, ir)
    sf = _ssim_stats(f)
    parts = [_ssim_parts(a, f, sy=sf), _ssim_parts(b, f, sy=sf)]  # scale 1 shared with MS-SSIM
    return {
        "EN": EN(f, convention),
        "SD": SD(f),
        "SF": SF(f, convention),
        "AG": AG(f, convention),
        "MI": MI(f, a, b, convention),
        "SCD": SCD(f, a, b),
        "VIF": VIF(f, a, b),
        "Qabf": Qabf(f, a, b),
        "SSIM": _combine_ssim(convention, parts[0][0], parts[1][0]),
        "CC": CC(f, a, b),
        "PSNR": PSNR(f, a, b, convention),
        "Nabf": Nabf(f, a, b),
        "MS-SSIM": sum(_ms_ssim_multi([a, b], f, first=parts)) / 2.0,
    }


def lowres_fidelity(fused, lowres, factor=None):
    """Fidelity of the fused image to a low-resolution source on the low-resolution grid.

    The fused image ([0, 1] floats or uint8, like evaluate_triple) is average-pooled to the
    low-resolution size (pool_to: factor x factor block mean with any remainder cropped when
    lowres.shape == fused.shape // factor, area resampling otherwise) and compared with the
    source: {'PSNR_lr': psnr(pooled, lowres) with peak 255, 'SSIM_lr': ssim(pooled, lowres)}.
    factor=None infers it: round(H / h) when that gives a block mean, area resampling otherwise.
    """
    f = _to_255(fused, "fused image")
    lr = _to_255(lowres, "low-resolution image")
    if lr.shape[0] > f.shape[0] or lr.shape[1] > f.shape[1]:
        raise InputError("low-resolution image", f"is {lr.shape[0]}x{lr.shape[1]}, larger than the fused "
                                                 f"image {f.shape[0]}x{f.shape[1]}")
    if factor is None:
        factor = max(1, int(round(f.shape[0] / lr.shape[0])))
    elif factor <= 0 or any(abs(f.shape[i] / factor - lr.shape[i]) >= 1.0 for i in (0, 1)):
        raise InputError("low-resolution image", f"size {lr.shape[0]}x{lr.shape[1]} does not match the fused "
                                                 f"size {f.shape[0]}x{f.shape[1]} / {factor}")
    pooled = pool_to(f, lr.shape, factor)
    return {"PSNR_lr": psnr(pooled, lr), "SSIM_lr": ssim(pooled, lr)}
