"""Checkpoints of the official TF1 code (ddcgan_tf.official), through every loader.

tests/data/official_tf1_variables.json is the variable list of a checkpoint that the official
multi-resolution graph (Generator.py, Deconv.py, PET-MRI Discriminator.py, built as train.py
builds it, G's RMSProp slots included) saved through tf.compat.v1; WORKSPACE.md says how it was
made. The tests write checkpoints with exactly those names (tf.raw_ops.SaveV2 writes the same
V2 bundle as TF1's Saver) and compare our networks with the official forward passes written
here against the names, independently of the name mapping under test.
"""
import json
import os
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow as tf

from ddcgan_tf import checkpoint as ckpt
from ddcgan_tf import official
from ddcgan_tf.discriminator import Discriminator
from ddcgan_tf.errors import InputError
from ddcgan_tf.train import build_model

from conftest import REPO, synthetic_pair

with open(os.path.join(REPO, "tests", "data", "official_tf1_variables.json")) as f:
    OFFICIAL_VARIABLES = {name: tuple(shape) for name, shape in json.load(f)}
DECONVS = ("Generator_2/deconv_ir/deconv1/kernel", "Generator_3/deconv_vis/deconv1/kernel")


def official_values(seed=0, drop=()):
    """Random values for every recorded variable (BN parameters away from 1 and 0)."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, shape in OFFICIAL_VARIABLES.items():
        if name in drop:
            continue
        if name == "Variable":
            values[name] = np.array(1136, np.int32)  # the official step counter
        elif name.endswith(("gamma", "moving_variance")):
            values[name] = (1.0 + 0.3 * rng.random(shape)).astype(np.float32)
        else:
            values[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return values


def write_tf1(prefix, values):
    """A name-based V2 checkpoint bundle (prefix.index + prefix.data-00000-of-00001), as TF1's
    Saver writes, with the `checkpoint` state file generate.py's directory has."""
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    names = sorted(values)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(values[n]) for n in names])
    with open(os.path.join(os.path.dirname(prefix), "checkpoint"), "w") as f:
        f.write(f'model_checkpoint_path: "{os.path.basename(prefix)}"\n')
    return prefix


def _bn(x, w, scope, moving):
    g, b = w[scope + "/batch_normalization/gamma"], w[scope + "/batch_normalization/beta"]
    if moving:
        mean, var = w[scope + "/batch_normalization/moving_mean"], w[scope + "/batch_normalization/moving_variance"]
    else:
        mean, var = tf.nn.moments(x, axes=[0, 1, 2])
    return (x - mean) / tf.sqrt(var + 1e-3) * g + b  # tf.layers.batch_normalization, epsilon 1e-3


def _conv(x, w, scope, bn=None, relu=True, stride=1, moving=False):
    """Official conv2d / conv2d_1: reflect pad, VALID conv + bias, BN (`bn` scope), ReLU."""
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    x = tf.nn.conv2d(x, w[scope + "/kernel"], stride, "VALID") + w[scope + "/bias"]
    if bn:
        x = _bn(x, w, bn, moving)
    return tf.nn.relu(x) if relu else x


def official_generator(w, vis, ir, moving=False):
    """Generator.transform of the official multi-resolution code (same-resolution when the
    checkpoint has no transposed convs), written against the checkpoint's names."""
    kw = dict(moving=moving)
    n, h, wd, _ = vis.shape
    if DECONVS[0] in w:
        ir = tf.nn.conv2d_transpose(ir, w[DECONVS[0]], [n, h, wd, 1], 4, "SAME")
        vis = tf.nn.conv2d_transpose(vis, w[DECONVS[1]], [n, h, wd, 1], 1, "SAME")
    x = _conv(tf.concat([vis, ir], 3), w, "Generator/encoder/conv1_1", "Generator/encoder/b0", **kw)
    for k in range(1, 5):  # dense: new features first, then the input
        x = tf.concat([_conv(x, w, f"Generator/encoder/dense_block_conv{k}", f"Generator/encoder/b{k}", **kw), x], 3)
    dec, bn = "Generator_1/decoder/", "Generator/decoder/"
    x = _conv(x, w, dec + "conv2_1", **kw)  # decode(): i == 0 without BN ...
    x = _conv(x, w, dec + "conv2_1", bn + "b0", **kw)  # ... falls through into the else branch
    x = _conv(x, w, dec + "conv2_1_1", bn + "b1", **kw)
    x = _conv(x, w, dec + "conv2_2", bn + "b2", **kw)
    x = _conv(x, w, dec + "conv2_3", bn + "b3", **kw)
    return tf.tanh(_conv(x, w, dec + "conv2_4", relu=False, **kw)) / 2 + 0.5


def official_discriminator(w, scope, x):
    x = _conv(x, w, scope + "/conv1", stride=2)
    x = _conv(x, w, scope + "/conv2", scope + "/b1", stride=2)
    x = _conv(x, w, scope + "/conv3", scope + "/b2", stride=2)
    x = tf.reshape(x, [x.shape[0], -1])
    return tf.tanh(x @ w[scope + "/flatten1/dense/kernel"] + w[scope + "/flatten1/dense/bias"]) / 2 + 0.5


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    values = official_values()
    return write_tf1(str(tmp_path_factory.mktemp("official") / "model" / "model.ckpt"), values), values


def inputs(n=2, h=36, w=44, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.random((n, h, w, 1)).astype(np.float32),
            rng.random((n, h // 4, w // 4, 1)).astype(np.float32))


def test_official_generator_fuses_as_the_official_graph(official_checkpoint):
    prefix, values = official_checkpoint
    vis, ir = inputs()
    gen = ckpt.load_generator(prefix)
    assert (gen.scale, gen.official_decoder, gen.bn_mode) == (4, True, "batch")
    np.testing.assert_allclose(gen((vis, ir)).numpy(), official_generator(values, vis, ir).numpy(), atol=2e-5)
    # the stored moving averages too (the official code never used them; bn_mode="moving" does)
    moving = ckpt.load_generator(prefix, bn_mode="moving")
    np.testing.assert_allclose(moving((vis, ir)).numpy(),
                               official_generator(values, vis, ir, moving=True).numpy(), atol=2e-5)


def test_every_way_of_naming_the_checkpoint_finds_it(official_checkpoint, generator_file):
    prefix, _ = official_checkpoint
    directory = os.path.dirname(prefix)
    for name in (prefix, prefix + ".index", prefix + ".data-00000-of-00001", directory):
        assert official.find(name) == prefix, name
    assert official.find(generator_file) is None
    assert official.find(os.path.dirname(generator_file)) is None


def test_directories_of_the_official_train_py_resolve(tmp_path):
    values = official_values(seed=5)
    # a `checkpoint` file written on another machine names an absolute path that does not exist
    # here: the newest checkpoint it names is found by its base name in the directory
    write_tf1(str(tmp_path / "model" / "1100.ckpt"), values)
    prefix = write_tf1(str(tmp_path / "model" / "1136.ckpt"), values)
    with open(tmp_path / "model" / "checkpoint", "w") as f:
        f.write('model_checkpoint_path: "/home/someone/DDcGAN/model/1136.ckpt"\n'
                'all_model_checkpoint_paths: "/home/someone/DDcGAN/model/1100.ckpt"\n')
    assert official.find(str(tmp_path / "model")) == prefix
    # several checkpoints and no `checkpoint` file: which one is meant cannot be told
    other = tmp_path / "several"
    for step in (40, 80):
        write_tf1(str(other / f"{step}.ckpt"), values)
    os.remove(other / "checkpoint")
    with pytest.raises(InputError, match="holds 2 TF1 checkpoints and no 'checkpoint' file") as e:
        ckpt.load_generator(str(other))
    assert str(e.value).startswith(str(other)) and "80.ckpt" in str(e.value)


def test_same_resolution_checkpoint_loads_with_scale_1(tmp_path):
    values = official_values(seed=2, drop=DECONVS)
    prefix = write_tf1(str(tmp_path / "same" / "model.ckpt"), values)
    gen = ckpt.load_generator(str(tmp_path / "same"))
    assert gen.scale == 1
    rng = np.random.default_rng(3)
    vis, ir = rng.random((2, 20, 28, 1), np.float32), rng.random((2, 20, 28, 1), np.float32)
    np.testing.assert_allclose(gen((vis, ir)).numpy(), official_generator(values, vis, ir).numpy(), atol=2e-5)
    model = build_model(patch_size=84)  # multi-resolution run: refuses it
    with pytest.raises(InputError, match="scale=1, this run has scale=4") as e:
        ckpt.load_networks(model, prefix)
    assert prefix in str(e.value)


def test_warm_start_loads_the_generator_and_both_discriminators(official_checkpoint):
    prefix, values = official_checkpoint
    model = build_model(patch_size=84)
    assert ckpt.warm_start_file(prefix + ".index") == prefix
    assert ckpt.load_networks(model, prefix + ".index") == ["generator", "dv", "di"]
    rng = np.random.default_rng(4)
    for net, scope, side in ((model.dv, "Discriminator1", 84), (model.di, "Discriminator2", 21)):
        x = rng.random((3, side, side, 1)).astype(np.float32)
        np.testing.assert_allclose(net(x, training=True).numpy(),
                                   official_discriminator(values, scope, x).numpy(), atol=2e-5)
    vis, ir = inputs(n=1, h=84, w=84)
    np.testing.assert_allclose(model.generator((vis, ir)).numpy(),
                               official_generator(values, vis, ir).numpy(), atol=2e-5)
    with pytest.raises(InputError, match="official_decoder=True, this run has official_decoder=False"):
        ckpt.load_networks(build_model(patch_size=84, official_decoder=False), prefix)


def test_fuse_cli_takes_an_official_checkpoint_directory(official_checkpoint, tmp_path):
    from test_fuse_cli import cli

    vis, ir = synthetic_pair(48, 64)
    iio.imwrite(tmp_path / "v.png", (vis * 255).round().astype(np.uint8))
    iio.imwrite(tmp_path / "i.png", (ir[::4, ::4] * 255).round().astype(np.uint8))
    out = tmp_path / "f.png"
    r = cli("ddcgan_tf.cli.fuse", "--checkpoint", os.path.dirname(official_checkpoint[0]),
            "--vis", str(tmp_path / "v.png"), "--ir", str(tmp_path / "i.png"), "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    fused = iio.imread(out)
    assert fused.shape == (48, 64) and fused.std() > 0
    assert (fused.min(), fused.max()) == (0, 255)  # min-max stretched, as the official imsave wrote it


def test_broken_official_checkpoints_are_one_line_errors(tmp_path):
    missing = official_values(drop=("Generator/encoder/b2/batch_normalization/beta",))
    prefix = write_tf1(str(tmp_path / "a" / "model.ckpt"), missing)
    with pytest.raises(InputError, match="holds no variable 'Generator/encoder/b2/batch_normalization/beta'") as e:
        ckpt.load_generator(prefix)
    assert str(e.value).startswith(prefix) and "\n" not in str(e.value)
    wrong = official_values()
    wrong["Discriminator1/flatten1/dense/kernel"] = np.zeros((100, 1), np.float32)  # another patch size
    prefix = write_tf1(str(tmp_path / "b" / "model.ckpt"), wrong)
    with pytest.raises(InputError, match=r"Discriminator1/flatten1/dense/kernel has shape \(100, 1\), "
                                         r"the model expects \(7744, 1\)"):
        ckpt.load_networks(build_model(patch_size=84), prefix)
    damaged = tmp_path / "c"
    shutil.copytree(tmp_path / "a", damaged)
    with open(damaged / "model.ckpt.index", "wb") as f:
        f.write(b"not a checkpoint index")
    with pytest.raises(InputError, match="cannot read TF1 checkpoint") as e:
        ckpt.load_generator(str(damaged))
    assert "\n" not in str(e.value)


def test_numpy_reader_reads_what_tensorflow_reads(official_checkpoint, tmp_path):
    """official.read_bundle (numpy alone, for the JAX trainer) parses the bundle as TensorFlow
    does: every variable, RMSProp slots and the int32 step counter included."""
    prefix, values = official_checkpoint
    got = official.read_bundle(prefix)
    reader = tf.train.load_checkpoint(prefix)
    assert sorted(got) == sorted(reader.get_variable_to_shape_map()) == sorted(values)
    for name in values:
        want = reader.get_tensor(name)
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want)
    # many blocks and keys sharing long prefixes: a bundle far larger than one 4 KiB table block
    many = {f"scope/{'x' * 40}/{k:04d}": np.full((k % 5,) * (k % 3), k, np.float32) for k in range(600)}
    many["scalar"] = np.array(2.5, np.float64)
    big = write_tf1(str(tmp_path / "many" / "model.ckpt"), many)
    got = official.read_bundle(big)
    assert sorted(got) == sorted(many)
    for name, value in many.items():
        np.testing.assert_array_equal(got[name], value)
        assert got[name].dtype == value.dtype
    with open(prefix + ".index", "rb") as f:
        index = f.read()
    damaged = tmp_path / "damaged"
    shutil.copytree(os.path.dirname(prefix), damaged)
    with open(damaged / "model.ckpt.index", "wb") as f:
        f.write(index[:-10])
    with pytest.raises(InputError, match="cannot read TF1 checkpoint") as e:
        official.read(str(damaged / "model.ckpt"), tensorflow=False)
    assert "\n" not in str(e.value)


def test_jax_fuser_reads_an_official_checkpoint_without_tensorflow(official_checkpoint):
    import sys
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import jax_train as jt
    from ddcgan_tf.fuse import Fuser

    prefix, _ = official_checkpoint
    P, S, config = jt.read_generator(os.path.dirname(prefix))
    assert (config["scale"], config["official_decoder"]) == (4, True)
    gen = ckpt.load_generator(prefix)
    ours = {v.path.split("generator/", 1)[1]: v.numpy() for v in gen.weights}
    assert sorted({**P, **S}) == sorted(ours)
    for k, v in {**P, **S}.items():
        np.testing.assert_array_equal(v, ours[k])
    vis, ir = synthetic_pair(48, 64, seed=2)
    for bn_mode in ("batch", "moving"):
        want = Fuser(ckpt.load_generator(prefix, bn_mode=bn_mode))(vis, ir[::4, ::4])
        np.testing.assert_allclose(jt.Fuser(prefix, bn_mode)(vis, ir[::4, ::4]), want, atol=1e-4)
