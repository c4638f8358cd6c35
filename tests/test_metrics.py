"""Tests for ddcgan_tf.metrics: hand-computed values, invariances, agreement with scikit-image
and with loop-based ports of the reference MATLAB code on small images."""
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.signal import convolve2d

from ddcgan_tf import metrics as M
from ddcgan_tf.errors import InputError

skm = pytest.importorskip("skimage.metrics")


def smooth_image(shape, sigma, seed):
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random(shape), sigma)
    return (x - x.min()) / (x.max() - x.min()) * 255.0


@pytest.fixture(scope="module")
def triple():
    a = np.rint(smooth_image((40, 52), 1.5, 1))
    b = np.rint(smooth_image((40, 52), 3.0, 2))
    f = np.clip(np.rint(0.6 * a + 0.4 * b + np.random.default_rng(3).normal(0, 4, a.shape)), 0, 255)
    return f, a, b


HALF = np.array([[0.0, 0.0], [255.0, 255.0]])   # two levels, half/half (rows)
HALF_T = HALF.T.copy()                          # two levels, half/half (columns), independent of HALF
RAMP = 2.0 * np.arange(4)[:, None] + 3.0 * np.arange(5)[None, :]  # 4 x 5, d/di = 2, d/dj = 3


# ----------------------------------------------------------------------------- EN, SD, SF, AG

@pytest.mark.parametrize("convention", M.CONVENTIONS)
def test_en_hand_values(convention):
    assert M.EN(HALF, convention) == pytest.approx(1.0, abs=1e-12)
    four = np.array([[0.0, 10.0], [20.0, 30.0]])
    assert M.EN(four, convention) == pytest.approx(2.0, abs=1e-12)
    assert M.EN(np.full((5, 7), 42.0), convention) == 0.0


def test_en_binning_round_vs_floor():
    img = np.array([[0.6, 0.6], [0.2, 0.2]])  # round -> {1, 0}; floor -> {0}
    assert M.EN(img, "cddfuse") == pytest.approx(1.0)
    assert M.EN(img, "vifb") == 0.0


def test_sd_hand_value():
    assert M.SD(np.array([[0.0, 2.0], [0.0, 2.0]])) == pytest.approx(1.0)
    assert M.SD(np.full((3, 3), 7.0)) == 0.0


def test_sf_ramp():
    assert M.SF(RAMP) == pytest.approx(math.sqrt(9 + 4))
    # VIFB divides both sums by M*N: (16 * 9 + 15 * 4) / 20
    assert M.SF(RAMP, "vifb") == pytest.approx(math.sqrt((16 * 9 + 15 * 4) / 20))


def test_ag_ramp_and_2x2():
    assert M.AG(RAMP) == pytest.approx(math.sqrt(6.5))
    assert M.AG(RAMP, "vifb") == pytest.approx(math.sqrt(6.5) * 20 / (3 * 4))
    # [[0, 2], [4, 8]]: gx rows (2, 4), gy columns (4, 6), one-sided differences
    img = np.array([[0.0, 2.0], [4.0, 8.0]])
    expected = (math.sqrt((4 + 16) / 2) + math.sqrt((4 + 36) / 2) + math.sqrt((16 + 16) / 2)
                + math.sqrt((16 + 36) / 2)) / 4
    assert M.AG(img) == pytest.approx(expected)
    assert M.AG(np.full((4, 4), 9.0)) == 0.0


# ----------------------------------------------------------------------------- MI

def test_mi_hand_values():
    # identical binary image: 1 bit; independent binary images: 0 bits
    assert M.mutual_information(HALF, HALF) == pytest.approx(1.0)
    assert M.mutual_information(HALF, HALF_T) == pytest.approx(0.0, abs=1e-12)
    assert M.MI(HALF, HALF, HALF_T) == pytest.approx(1.0)
    assert M.MI(HALF, HALF, HALF, "vifb") == pytest.approx(2 * math.log(2))  # nats


def test_mi_self_is_twice_entropy_and_symmetric(triple):
    f, a, b = triple
    assert M.MI(f, f, f) == pytest.approx(2 * M.EN(f), rel=1e-12)
    for conv in M.CONVENTIONS:
        assert M.MI(f, a, b, conv) == pytest.approx(M.MI(f, b, a, conv), rel=1e-12)
        assert M.mutual_information(f, a, conv) == pytest.approx(M.mutual_information(a, f, conv), rel=1e-12)


def test_mi_vifb_min_max_normalises():
    # VIFB stretches each image to 0..255 before binning: scaling an image does not change MI
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16)).astype(float)
    f = np.clip(a + rng.integers(-20, 20, a.shape), 0, 255)
    a[0, 0], a[0, 1] = 0, 255
    f[0, 0], f[0, 1] = 0, 255
    assert M.mutual_information(f, a / 255.0 * 100.0, "vifb") == pytest.approx(M.mutual_information(f, a, "vifb"))


# ----------------------------------------------------------------------------- SCD, CC, PSNR

def test_scd_and_cc_hand_values(triple):
    _, a, b = triple
    assert M.SCD(a + b, a, b) == pytest.approx(2.0)  # F - B = A and F - A = B
    # an asymmetric fusion: each term by hand (Aslantas & Bendes: r(F - B, A) + r(F - A, B))
    f = a + 0.5 * b
    r = lambda x, y: np.corrcoef(x.ravel(), y.ravel())[0, 1]  # noqa: E731
    assert M.SCD(f, a, b) == pytest.approx(r(f - b, a) + r(f - a, b), rel=1e-9)
    assert M.SCD(f, a, b) == pytest.approx(M.SCD(f, b, a), rel=1e-9)  # the sources' order does not matter
    assert M.SCD(f, a, b) != pytest.approx(2 * r(f - b, a), rel=1e-3)
    assert M.CC(2 * a + 3, a, 0.5 * a + 1) == pytest.approx(1.0)
    assert M.CC(a, a, -a) == pytest.approx(0.0, abs=1e-12)
    assert M.CC(a, a, b) == pytest.approx((1 + np.corrcoef(a.ravel(), b.ravel())[0, 1]) / 2)


def test_psnr_known_mse():
    a = np.full((8, 8), 100.0)
    f = a + 1.0          # MSE(F, A) = 1
    b = f - 3.0          # MSE(F, B) = 9
    assert M.PSNR(f, a, b) == pytest.approx(10 * math.log10(255 ** 2 / 5.0))
    n = a.size           # VIFB error term e = sqrt(SSE) / N: sqrt(n) / n and 3 sqrt(n) / n
    e = (math.sqrt(n) + 3 * math.sqrt(n)) / n / 2
    assert M.PSNR(f, a, b, "vifb") == pytest.approx(10 * math.log10(255 ** 2 / e))
    assert M.PSNR(a, a, a) == math.inf


def test_psnr_matches_skimage(triple):
    f, a, _ = triple
    ref = skm.peak_signal_noise_ratio(a, f, data_range=255)
    assert M.psnr(f, a) == pytest.approx(ref, rel=1e-12)
    assert M.PSNR(f, a, a) == pytest.approx(ref, rel=1e-12)


# ----------------------------------------------------------------------------- SSIM, MS-SSIM

def sk_ssim(x, y):
    return skm.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255)


def test_ssim_matches_skimage(triple):
    f, a, b = triple
    for x, y in ((f, a), (f, b), (a, b)):
        assert M.ssim(x, y) == pytest.approx(sk_ssim(x, y), rel=1e-9)
    assert M.SSIM(f, a, b) == pytest.approx((sk_ssim(f, a) + sk_ssim(f, b)) / 2, rel=1e-9)
    assert M.SSIM(f, a, b, "vifb") == pytest.approx(sk_ssim(f, a) + sk_ssim(f, b), rel=1e-9)


def test_ssim_identity_and_small_images(triple):
    _, a, _ = triple
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert M.SSIM(a, a, a) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(M.ssim(np.zeros((10, 30)), np.zeros((10, 30))))


def test_ms_ssim():
    x = smooth_image((192, 200), 2.0, 5)
    y = np.clip(x + np.random.default_rng(6).normal(0, 10, x.shape), 0, 255)
    assert M.ms_ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    v = M.ms_ssim(x, y)
    assert 0.0 < v < 1.0
    assert M.MS_SSIM(y, x, x) == pytest.approx(v)
    r = M.evaluate_triple(y / 255, x / 255, np.flipud(x) / 255)  # evaluate_triple shares scale 1
    assert r["MS-SSIM"] == pytest.approx(M.MS_SSIM(y, x, np.flipud(x)), rel=1e-12)
    assert r["SSIM"] == pytest.approx(M.SSIM(y, x, np.flipud(x)), rel=1e-12)
    # one scale is plain SSIM; (0, 1) weights: SSIM of the 2 x 2 block means
    assert M.ms_ssim(x, y, weights=(1.0,)) == pytest.approx(sk_ssim(x, y), rel=1e-9)

    def half(z):
        return z.reshape(z.shape[0] // 2, 2, z.shape[1] // 2, 2).mean(axis=(1, 3))

    assert M.ms_ssim(x, y, weights=(0.0, 1.0)) == pytest.approx(sk_ssim(half(x), half(y)), rel=1e-9)
    assert math.isnan(M.ms_ssim(x[:100], y[:100]))  # coarsest scale below 11 x 11


@pytest.mark.parametrize("shape", [(192, 200), (193, 201)])
def test_ms_ssim_equals_tensorflows_ssim_multiscale(shape):
    """Every term of MS-SSIM (the contrast-structure products of scales 1-4, the 2 x 2 halving
    with odd sizes padded by their edge, the weights' order, the clip at 0) against an
    independent implementation, tf.image.ssim_multiscale (same window, constants and weights;
    it computes in float32, hence the tolerance). A fusion-like distortion: gain, offset and
    noise, so that SSIM and contrast-structure differ at every scale."""
    import tensorflow as tf

    x = smooth_image(shape, 2.0, 5)
    y = np.clip(0.7 * x + 30 + np.random.default_rng(6).normal(0, 25, x.shape), 0, 255)
    ref = float(tf.image.ssim_multiscale(tf.constant(x[None, ..., None], tf.float32),
                                         tf.constant(y[None, ..., None], tf.float32), max_val=255.0)[0])
    assert M.ms_ssim(x, y) == pytest.approx(ref, abs=2e-5)


# ----------------------------------------------------------------------------- VIF

def _vifp_mscale_reference(ref, dist):
    """vifp_mscale.m (Sheikh & Bovik) line by line, with 2-D windows (fspecial('gaussian', N,
    N/5)) and filter2(..., 'valid') as scipy's correlate2d: an independent check of vifp."""
    from scipy.signal import correlate2d
    ref, dist = ref.astype(np.float64), dist.astype(np.float64)
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        x = np.arange(n) - (n - 1) / 2
        win = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * (n / 5.0) ** 2))
        win /= win.sum()
        f2 = lambda img: correlate2d(img, win, mode="valid")  # noqa: E731
        if scale > 1:
            ref, dist = f2(ref)[::2, ::2], f2(dist)[::2, ::2]
        mu1, mu2 = f2(ref), f2(dist)
        s1 = f2(ref * ref) - mu1 * mu1
        s2 = f2(dist * dist) - mu2 * mu2
        s12 = f2(ref * dist) - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        m = s1 < 1e-10
        g[m], sv[m], s1[m] = 0, s2[m], 0
        m = s2 < 1e-10
        g[m], sv[m] = 0, 0
        m = g < 0
        sv[m], g[m] = s2[m], 0
        sv[sv <= 1e-10] = 1e-10
        num += np.log10(1 + g ** 2 * s1 / (sv + 2.0)).sum()
        den += np.log10(1 + s1 / 2.0).sum()
    return num / den


def test_vifp_equals_the_reference_code():
    """Against vifp_mscale.m written out independently: sigma_nsq = 2, four scales of 17/9/5/3
    taps, 2x subsampling between them (the identity and blur checks below hold without them)."""
    rng = np.random.default_rng(3)
    ref = ndimage.gaussian_filter(rng.random((96, 88)) * 255, 2) + rng.normal(0, 4, (96, 88))
    for dist in (ndimage.gaussian_filter(ref, 1.5), 0.7 * ref + 20 + rng.normal(0, 6, ref.shape)):
        assert M.vifp(ref, dist) == pytest.approx(_vifp_mscale_reference(ref, dist), rel=1e-9)


def test_vif_identity_and_degradation(triple):
    f, a, b = triple
    assert M.vifp(a, a) == pytest.approx(1.0, abs=1e-6)
    assert M.vifp(b, b) == pytest.approx(1.0, abs=1e-6)
    assert M.VIF(a, a, a) == pytest.approx(2.0, abs=1e-6)
    assert M.VIF(f, a, b) == pytest.approx(M.vifp(a, f) + M.vifp(b, f))
    blurred = ndimage.gaussian_filter(a, 2.0)
    assert 0.0 < M.vifp(a, blurred) < 0.9
    assert M.vifp(np.full((40, 40), 3.0), np.full((40, 40), 3.0)) == 1.0  # 0/0 -> 1 as the reference


# ----------------------------------------------------------------------------- Qabf

def qabf_loop_reference(f, a, b):
    """Port of VIFB metricsQabf.m (conv2 'same') with the intended G = min/max ratio."""
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)

    def edges(p):
        sx, sy = convolve2d(p, h3, mode="same"), convolve2d(p, h1, mode="same")
        g = np.sqrt(sx ** 2 + sy ** 2)
        al = np.empty_like(p)
        for i in range(p.shape[0]):
            for j in range(p.shape[1]):
                al[i, j] = math.pi / 2 if sx[i, j] == 0 else math.atan(sy[i, j] / sx[i, j])
        return g, al

    gF, aF = edges(f)
    num = den = 0.0
    for s in (a, b):
        gS, aS = edges(s)
        for i in range(f.shape[0]):
            for j in range(f.shape[1]):
                x, y = gS[i, j], gF[i, j]
                G = 0.0 if max(x, y) == 0 else min(x, y) / max(x, y)
                A = 1 - abs(aS[i, j] - aF[i, j]) / (math.pi / 2)
                q = 0.9994 / (1 + math.exp(-15 * (G - 0.5))) * 0.9879 / (1 + math.exp(-22 * (A - 0.8)))
                num += q * x
                den += x
    return num / den


def test_qabf_matches_loop_reference():
    f, a, b = (np.rint(smooth_image((12, 15), 1.0, s)) for s in (7, 8, 9))
    assert M.Qabf(f, a, b) == pytest.approx(qabf_loop_reference(f, a, b), rel=1e-12)


def test_qabf_maximum_at_identity(triple):
    f, a, b = triple
    # the constants cap Q at Tg/(1+e^{kg/2}) * Ta/(1+e^{0.2 ka}) = 0.9748 (not 1)
    assert M.QABF_MAX == pytest.approx(0.9994 / (1 + math.exp(-7.5)) * 0.9879 / (1 + math.exp(-4.4)))
    assert M.QABF_MAX == pytest.approx(0.97479, abs=1e-5)
    q_same = M.Qabf(a, a, a)
    assert q_same == pytest.approx(M.QABF_MAX, rel=1e-12)
    noisy = np.clip(a + np.random.default_rng(4).normal(0, 8, a.shape), 0, 255)
    assert M.Qabf(noisy, a, a) < q_same - 0.05
    assert 0.0 < M.Qabf(f, a, b) < q_same


# ----------------------------------------------------------------------------- Nabf

def nabf_loop_reference(f, a, b):
    """Port of Kumar's objective_fusion_perform_fn.m (NABF part), loops and all."""
    smooth = (1, 2, 1)

    def sobel(x):
        # vtemp = [-1 0 1; -2 0 2; -1 0 1] / 8, htemp = its transpose; written as smoothed
        # differences so that gradients vanishing by mirror symmetry are exactly 0
        e = np.pad(x, 1, mode="reflect")  # per_extn_im_fn(x, 3): mirror without edge repeat
        gv, gh = np.zeros_like(x), np.zeros_like(x)
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                gv[i, j] = sum(smooth[k] * (e[i + k, j + 2] - e[i + k, j]) for k in range(3)) / 8
                gh[i, j] = sum(smooth[k] * (e[i + 2, j + k] - e[i, j + k]) for k in range(3)) / 8
        return gv, gh

    def edges(x):
        gv, gh = sobel(x)
        g = np.sqrt(gv ** 2 + gh ** 2)
        al = np.zeros_like(x)
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                if gh[i, j] != 0:
                    al[i, j] = math.atan(gv[i, j] / gh[i, j])
                elif gv[i, j] != 0:
                    al[i, j] = math.copysign(math.pi / 2, gv[i, j])
        return g, al

    gF, aF = edges(f)
    qs, ws, gs = [], [], []
    for s in (a, b):
        gS, aS = edges(s)
        G = np.where((gS == 0) | (gF == 0), 0.0, np.minimum(gS, gF) / np.maximum(np.maximum(gS, gF), 1e-300))
        A = np.abs(np.abs(aS - aF) - math.pi / 2) * 2 / math.pi
        Q = np.sqrt(0.9999 / (1 + np.exp(-19 * (G - 0.5))) * 0.9995 / (1 + np.exp(-22 * (A - 0.5))))
        W = np.where(gS >= 2, gS ** 1.5, 0.001)
        qs.append(Q)
        ws.append(W)
        gs.append(gS)
    na = (gF > gs[0]) & (gF > gs[1])
    return float((na * ((1 - qs[0]) * ws[0] + (1 - qs[1]) * ws[1])).sum() / (ws[0] + ws[1]).sum())


def test_nabf_matches_loop_reference_and_identity(triple):
    f, a, b = (np.rint(smooth_image((12, 15), 1.0, s)) for s in (10, 11, 12))
    f = np.clip(f + np.random.default_rng(13).normal(0, 20, f.shape), 0, 255)
    assert M.Nabf(f, a, b) == pytest.approx(nabf_loop_reference(f, a, b), rel=1e-12)
    _, a, b = triple
    assert M.Nabf(a, a, a) == 0.0
    assert M.Nabf((a + b) / 2, a, b) == pytest.approx(0.0, abs=1e-3)  # averaging adds no edges
    noise = np.random.default_rng(4).normal(0, 1, a.shape)
    n15 = M.Nabf(np.clip(a + 15 * noise, 0, 255), a, a)
    n40 = M.Nabf(np.clip(a + 40 * noise, 0, 255), a, a)
    assert 0.005 < n15 < n40 < 1.0


# ----------------------------------------------------------------------------- evaluate_triple

def test_evaluate_triple_keys_scaling_and_upsampling(triple):
    f, a, b = triple
    r = M.evaluate_triple(f / 255.0, a / 255.0, b / 255.0)
    assert tuple(r) == M.METRIC_NAMES
    assert r["MI"] == pytest.approx(M.MI(f, a, b))
    assert r["PSNR"] == pytest.approx(M.PSNR(f, a, b))
    r8 = M.evaluate_triple(f.astype(np.uint8), a.astype(np.uint8), b.astype(np.uint8))
    assert r8 == pytest.approx(r, rel=1e-12, nan_ok=True)
    # low-resolution IR: identical to upsampling it by hand first
    low = np.clip(ndimage.zoom(b, 0.25), 0, 255)
    up = np.clip(ndimage.zoom(low, (40 / 10, 52 / 13), order=3), 0, 255)
    r_low = M.evaluate_triple(f / 255.0, a / 255.0, low / 255.0, convention="vifb")
    r_up = M.evaluate_triple(f / 255.0, a / 255.0, up / 255.0, convention="vifb")
    assert r_low == pytest.approx(r_up, nan_ok=True)


def test_evaluate_triple_rejects_bad_input(triple):
    f, a, b = triple
    with pytest.raises(InputError, match="0, 1"):
        M.evaluate_triple(f, a, b)  # 0..255 floats
    with pytest.raises(InputError, match="larger than the fused"):
        M.evaluate_triple(f[:20] / 255, a / 255, b / 255)
    with pytest.raises(ValueError, match="convention"):
        M.evaluate_triple(f / 255, a / 255, b / 255, convention="paper")


@pytest.mark.parametrize("shape,target", [((37, 23), (150, 91)), ((16, 12), (64, 48)), ((64, 64), (256, 256))])
def test_upsample_exact_shape(shape, target):
    x = smooth_image(shape, 1.0, 0)
    assert M.upsample_bicubic(x, target).shape == target


# ----------------------------------------------------------------------------- low resolution

def test_lowres_fidelity_block_mean():
    low = smooth_image((12, 16), 1.0, 20) / 255.0
    fused = np.kron(low, np.ones((4, 4)))          # 48 x 64, block means give back `low`
    r = M.lowres_fidelity(fused, low, 4)
    assert r["PSNR_lr"] == math.inf
    assert math.isnan(r["SSIM_lr"]) or r["SSIM_lr"] == pytest.approx(1.0)
    big = smooth_image((48, 64), 1.0, 21) / 255.0
    fused = np.kron(big, np.ones((4, 4)))
    r = M.lowres_fidelity(fused, big, 4)
    assert r["SSIM_lr"] == pytest.approx(1.0, abs=1e-12)
    # remainder rows/columns are cropped: 4*48+3 rows, 4*64+2 columns
    padded = np.pad(fused, ((0, 3), (0, 2)), constant_values=1.0)
    assert M.lowres_fidelity(padded, big, 4)["PSNR_lr"] == math.inf
    assert M.lowres_fidelity(padded, big)["PSNR_lr"] == math.inf  # factor inferred
    noisy = np.clip(fused + np.random.default_rng(0).normal(0, 0.05, fused.shape), 0, 1)
    r = M.lowres_fidelity(noisy, big, 4)
    assert 20 < r["PSNR_lr"] < 60 and 0 < r["SSIM_lr"] < 1
    with pytest.raises(InputError):
        M.lowres_fidelity(fused, big, 3)


def test_pool_to_area_path():
    x = smooth_image((11, 9), 1.0, 22)
    assert np.allclose(M._area_matrix(11, 6).sum(axis=1), 1.0)
    assert np.allclose(M.pool_to(np.full((11, 9), 5.0), (6, 5), 2), 5.0)  # 11 // 2 = 5 != 6: area path
    assert M.pool_to(x, (6, 5), 2).mean() == pytest.approx(x.mean())
    # block mean and area resampling agree on exact multiples
    y = smooth_image((12, 8), 1.0, 23)
    assert np.allclose(M.area_downsample(y, (3, 2)), y.reshape(3, 4, 2, 4).mean(axis=(1, 3)))
