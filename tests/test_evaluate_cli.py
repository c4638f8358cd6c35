"""Tests for ddcgan-evaluate: evaluate_dirs in-process, the CLI via `python -m` subprocesses."""
import json
import math
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage

from ddcgan_tf import metrics as M
from ddcgan_tf.cli.evaluate import evaluate_dirs
from ddcgan_tf.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEMS = ("pair_a", "pair_b")


def _unit(x):
    return (x - x.min()) / (x.max() - x.min())


@pytest.fixture()
def dirs(tmp_path):
    """fused/vis at 48 x 64, IR at 12 x 16 (1/4 resolution), two pairs."""
    rng = np.random.default_rng(0)
    out = {k: tmp_path / k for k in ("fused", "vis", "ir")}
    for d in out.values():
        d.mkdir()
    for stem in STEMS:
        vis = _unit(ndimage.gaussian_filter(rng.random((48, 64)), 2))
        ir = _unit(ndimage.gaussian_filter(rng.random((48, 64)), 4))
        ir_low = np.clip(ndimage.zoom(ir, 0.25), 0, 1)
        iio.imwrite(out["vis"] / f"{stem}.png", np.rint(vis * 255).astype(np.uint8))
        iio.imwrite(out["ir"] / f"{stem}.png", np.rint(ir_low * 255).astype(np.uint8))
        iio.imwrite(out["fused"] / f"{stem}.png", np.rint((vis + ir) / 2 * 255).astype(np.uint8))
    return {k: str(v) for k, v in out.items()}


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ddcgan_tf.cli.evaluate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def dir_args(d):
    return ["--fused_dir", d["fused"], "--vis_dir", d["vis"], "--ir_dir", d["ir"]]


def test_evaluate_dirs_rows_and_mean(dirs):
    rows, mean = evaluate_dirs(dirs["fused"], dirs["vis"], dirs["ir"], "cddfuse")
    assert [r["name"] for r in rows] == list(STEMS)
    expected = ["name", *M.METRIC_NAMES, *M.LOWRES_NAMES]
    assert all(list(r) == expected for r in rows)
    assert list(mean) == expected and mean["name"] == "mean"
    for k in ("EN", "MI", "SSIM", "PSNR", "PSNR_lr"):
        assert mean[k] == pytest.approx((rows[0][k] + rows[1][k]) / 2)
    assert math.isnan(mean["MS-SSIM"])  # 48 x 64 is below MS-SSIM's 176 px minimum
    # the low-resolution IR was upsampled bicubically before the metrics
    from ddcgan_tf.images import read_grey
    f = read_grey(os.path.join(dirs["fused"], "pair_a.png"))
    v = read_grey(os.path.join(dirs["vis"], "pair_a.png"))
    i = read_grey(os.path.join(dirs["ir"], "pair_a.png"))
    assert i.shape == (12, 16)
    assert rows[0]["Qabf"] == pytest.approx(M.evaluate_triple(f, v, i)["Qabf"])
    assert rows[0]["PSNR_lr"] == pytest.approx(M.lowres_fidelity(f, i, 4)["PSNR_lr"])
    rows_v, _ = evaluate_dirs(dirs["fused"], dirs["vis"], dirs["ir"], "vifb")
    assert rows_v[0]["SSIM"] == pytest.approx(2 * rows[0]["SSIM"])  # summed vs averaged
    assert rows_v[0]["CC"] == pytest.approx(rows[0]["CC"])


def test_evaluate_dirs_errors(dirs, tmp_path):
    os.remove(os.path.join(dirs["ir"], "pair_b.png"))
    with pytest.raises(InputError, match="pair_b"):
        evaluate_dirs(dirs["fused"], dirs["vis"], dirs["ir"])
    with pytest.raises(InputError, match="convention"):
        evaluate_dirs(dirs["fused"], dirs["vis"], dirs["ir"], "paper")


def test_sources_are_cropped_as_fuse_resize_cropped_them(dirs):
    """README's pipeline: `ddcgan-fuse --resize` crops a 50x66 visible image (and a full-size
    infrared one) to 48x64; ddcgan-evaluate then scores against the same crop, not an error.
    A source larger by more than that crop is still refused."""
    from ddcgan_tf.images import read_grey
    rows, _ = evaluate_dirs(dirs["fused"], dirs["vis"], dirs["ir"])
    vis = read_grey(os.path.join(dirs["vis"], "pair_a.png"))
    bigger = np.pad(vis, ((0, 2), (0, 2)), mode="reflect")  # 50 x 66: crops back to 48 x 64
    iio.imwrite(os.path.join(dirs["vis"], "pair_a.png"), np.rint(bigger * 255).astype(np.uint8))
    cropped, _ = evaluate_dirs(dirs["fused"], dirs["vis"], dirs["ir"])
    assert cropped[0].keys() == rows[0].keys()
    assert all(cropped[0][k] == rows[0][k] or (math.isnan(cropped[0][k]) and math.isnan(rows[0][k]))
               for k in rows[0] if k != "name")
    iio.imwrite(os.path.join(dirs["vis"], "pair_a.png"), np.zeros((52, 64), np.uint8))
    with pytest.raises(InputError, match="pair_a.png: is 52x64, larger than the fused image .* by more"):
        evaluate_dirs(dirs["fused"], dirs["vis"], dirs["ir"])


def test_a_triple_the_metrics_cannot_score_is_reported_with_its_file(dirs):
    """A 1-pixel-high image passes the reader but not AG (2 x 2 pixels at least): an InputError
    naming the fused file, and in a directory run the other triples are still scored."""
    for d, shape in (("fused", (1, 16)), ("vis", (1, 16)), ("ir", (1, 4))):
        iio.imwrite(os.path.join(dirs[d], "pair_a.png"), np.full(shape, 100, np.uint8))
    failures = []
    rows, _ = evaluate_dirs(dirs["fused"], dirs["vis"], dirs["ir"], failures=failures)
    assert [r["name"] for r in rows] == ["pair_b"]
    assert failures[0][0] == "pair_a" and "pair_a.png: cannot be scored (AG needs" in failures[0][1]
    with pytest.raises(InputError, match="pair_a.png: cannot be scored"):
        evaluate_dirs(dirs["fused"], dirs["vis"], dirs["ir"])


def test_cli_markdown_and_csv_output_file(dirs, tmp_path):
    res = run_cli(*dir_args(dirs))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "convention=cddfuse" in lines[0] and "bicubic" in lines[0]
    table_header = next(line for line in lines if line.startswith("| name |"))
    cells = [c.strip() for c in table_header.strip("|").split("|")]
    assert cells == ["name", *M.METRIC_NAMES, *M.LOWRES_NAMES]
    assert any(line.startswith("| pair_a |") for line in lines)
    assert lines[-1].startswith("| **mean** |")

    out_file = tmp_path / "table.csv"
    res = run_cli(*dir_args(dirs), "--format", "csv", "--convention", "vifb", "--output", str(out_file))
    assert res.returncode == 0, res.stderr
    assert out_file.read_text() == res.stdout
    lines = res.stdout.splitlines()
    assert lines[0].startswith("# ") and "convention=vifb" in lines[0] and "bicubic" in lines[0]
    assert lines[1].split(",") == ["name", *M.METRIC_NAMES, *M.LOWRES_NAMES]
    assert [line.split(",")[0] for line in lines[2:]] == [*STEMS, "mean"]


def test_cli_json(dirs):
    res = run_cli(*dir_args(dirs), "--format", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert "convention=cddfuse" in doc["header"] and "bicubic" in doc["header"]
    assert doc["metrics"] == [*M.METRIC_NAMES, *M.LOWRES_NAMES]
    assert [r["name"] for r in doc["rows"]] == list(STEMS)
    assert doc["mean"]["name"] == "mean"
    assert doc["mean"]["MS-SSIM"] is None  # nan -> null
    rows, mean = evaluate_dirs(dirs["fused"], dirs["vis"], dirs["ir"])
    assert doc["mean"]["Qabf"] == pytest.approx(mean["Qabf"])


def test_cli_missing_partner_and_unreadable_file(dirs):
    os.remove(os.path.join(dirs["vis"], "pair_b.png"))
    res = run_cli(*dir_args(dirs))
    assert res.returncode == 2
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in res.stderr
    assert "pair_b" in err and err.startswith("ddcgan-evaluate: error:")
    assert res.stdout == ""

    os.remove(os.path.join(dirs["fused"], "pair_b.png"))
    os.remove(os.path.join(dirs["ir"], "pair_b.png"))
    with open(os.path.join(dirs["ir"], "pair_a.png"), "wb") as fh:
        fh.write(b"not a png")
    res = run_cli(*dir_args(dirs), "--format", "json")
    assert res.returncode == 2
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in res.stderr
    assert "pair_a.png" in err


def test_cli_continues_past_a_bad_triple_and_exits_2(dirs):
    with open(os.path.join(dirs["ir"], "pair_a.png"), "wb") as fh:
        fh.write(b"not a png")
    res = run_cli(*dir_args(dirs), "--format", "csv")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "pair_b" in res.stdout and "pair_a" not in res.stdout  # the good triple is scored
    assert "pair_a.png" in res.stderr
