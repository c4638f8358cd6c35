"""Weights trained with the official TF1 code (hanna-xu/DDcGAN), read into our networks.

The official `train.py` saves name-based TF1 checkpoints (`saver.save(sess, '.../N.ckpt')`:
`N.ckpt.index` + `N.ckpt.data-*`, a `checkpoint` file naming the newest in the directory);
`generate.py` restores `model.ckpt`. `load_generator` / `load_networks` here take such a prefix
(or its `.index` / `.data-*` / `.meta` file, or a directory holding one) wherever ddcgan_tf takes
a checkpoint: `ddcgan-fuse --checkpoint`, `ddcgan-export`, `ddcgan-train --init_from`.

Variable names, as the official graph creates them (recorded by building the official
Generator.py / Deconv.py / Discriminator.py through tf.compat.v1 and saving it; WORKSPACE.md):

  Generator/encoder/conv1_1, dense_block_conv{1..4}/{kernel,bias}   (tf.Variable)
  Generator/encoder/b{0..4}/batch_normalization/{gamma,beta,moving_mean,moving_variance}
  Generator_1/decoder/conv2_1, conv2_1_1, conv2_2, conv2_3, conv2_4/{kernel,bias}
      (the decoder opens a second name scope `Generator`, and a second `conv2_1` scope for
      its 240->128 kernel: Decoder.__init__ names two kernels `conv2_1`)
  Generator/decoder/b{0..3}/batch_normalization/...
  Generator_2/deconv_ir/deconv1/kernel, Generator_3/deconv_vis/deconv1/kernel  (multi-resolution)
  Discriminator1 (visible), Discriminator2 (infrared): conv{1,2,3}/{kernel,bias},
      b{1,2}/batch_normalization/..., flatten1/dense/{kernel,bias}

The `_N` suffix of the first scope depends on the order the graph was built in, so it is
ignored. `read` parses the checkpoint with TensorFlow; `read_bundle` parses the same files with
numpy alone (the TF1 "tensor bundle": an SSTable index of BundleEntryProto records and raw
little-endian data), for the JAX trainer on machines without TensorFlow. Optimizer slots (`.../RMSProp`) and the step counter are not read: a warm start from
an official checkpoint starts fresh optimizers, as `--init_from` does for our own files. The
official decoder applies its first kernel twice, so imported generators have
`official_decoder=True`; the same-resolution variant (no transposed convs) loads with scale 1.
"""
import glob
import os
import re
import struct

import numpy as np

from ddcgan_tf import config as C
from ddcgan_tf.errors import InputError, describe

SUFFIXES = (".index", ".meta")
_DATA = re.compile(r"\.data-\d+-of-\d+$")
_FIRST_SCOPE_SUFFIX = re.compile(r"^([^/]+?)_\d+/")
# our decoder_convs[k] <- the official scope of the k-th decoder kernel, and its BN scope
_DECODER = (("conv2_1", "b0"), ("conv2_1_1", "b1"), ("conv2_2", "b2"), ("conv2_3", "b3"),
            ("conv2_4", None))
_BN = ("gamma", "beta", "moving_mean", "moving_variance")
DISCRIMINATOR_SCOPES = {"dv": "Discriminator1", "di": "Discriminator2"}


def find(path):
    """The TF1 checkpoint prefix `path` names, or None when it names none (e.g. our .h5 files)."""
    path = os.fspath(path)
    for suffix in SUFFIXES:
        if path.endswith(suffix) and os.path.isfile(path[:-len(suffix)] + ".index"):
            return path[:-len(suffix)]
    if _DATA.search(path) and os.path.isfile(_DATA.sub("", path) + ".index"):
        return _DATA.sub("", path)
    if os.path.isfile(path + ".index"):
        return path
    if os.path.isdir(path):
        newest = _newest_in(path)
        if newest:
            return newest
    return None


def _newest_in(directory):
    """The prefix the directory's TF1 `checkpoint` file names (as written, relative to the
    directory, or its base name there: the file may come from another machine), else the only
    *.index file; InputError when there are several and none is named."""
    state = os.path.join(directory, "checkpoint")
    if os.path.isfile(state):
        try:
            with open(state, encoding="utf-8") as f:
                m = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', f.read(), re.M)
        except (OSError, UnicodeDecodeError):
            m = None
        if m:
            named = m.group(1)
            candidates = ([named] if os.path.isabs(named) else []) + [
                os.path.join(directory, named), os.path.join(directory, os.path.basename(named))]
            for prefix in candidates:
                if os.path.isfile(prefix + ".index"):
                    return prefix
    found = sorted(glob.glob(os.path.join(glob.escape(directory), "*.index")))
    if len(found) > 1:
        raise InputError(directory, f"holds {len(found)} TF1 checkpoints and no 'checkpoint' file naming "
                                    f"one: give one, e.g. {found[-1][:-len('.index')]}")
    return found[0][:-len(".index")] if found else None


def read(prefix, tensorflow=True):
    """{name with the first scope's _N suffix removed: numpy array} of a TF1 checkpoint, read
    with TensorFlow, or with numpy alone (`read_bundle`) when tensorflow=False."""
    if tensorflow:
        import tensorflow as tf
        errors = (tf.errors.OpError, ValueError, OSError)
    else:
        errors = (ValueError, OSError, IndexError, KeyError, struct.error)
    try:
        if tensorflow:
            reader = tf.train.load_checkpoint(prefix)
            stored = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
        else:
            stored = read_bundle(prefix)
        values = {}
        for name, value in stored.items():
            key = _FIRST_SCOPE_SUFFIX.sub(r"\1/", name)
            if key in values:
                raise InputError(prefix, f"two variables map to {key!r}: not one official DDcGAN graph")
            values[key] = value
    except InputError:
        raise
    except errors as e:
        raise InputError(prefix, f"cannot read TF1 checkpoint ({describe(e)})") from None
    return values


# ------------------------------------------------------------ the TF1 bundle, without TensorFlow
_MAGIC = 0xDB4775248B80FB57  # leveldb/TF table footer magic
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 19: "<f2"}


def _varint(buf, pos):
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _proto(buf):
    """{field number: [values]} of a protobuf message (varints as ints, the rest as bytes)."""
    fields, pos = {}, 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        kind = tag & 7
        if kind == 0:
            value, pos = _varint(buf, pos)
        elif kind == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif kind == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif kind == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"protobuf wire type {kind}")
        fields.setdefault(tag >> 3, []).append(value)
    return fields


def _block(data, handle):
    """[(key, value)] of one table block (prefix-compressed keys, restart array at the end)."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    block = data[offset:offset + size]
    if data[offset + size] != 0:
        raise ValueError("compressed table block")
    (restarts,) = struct.unpack_from("<I", block, size - 4)
    end, pos, key, out = size - 4 - 4 * restarts, 0, b"", []
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        out.append((key, block[pos:pos + length]))
        pos += length
    return out


def read_bundle(prefix):
    """{name: numpy array} of a TF1/TF2 name-based checkpoint (prefix.index + prefix.data-*),
    parsed with numpy alone; names as stored (tensors of other dtypes, e.g. strings, skipped)."""
    with open(prefix + ".index", "rb") as f:
        index = f.read()
    if len(index) < 48 or struct.unpack_from("<Q", index, len(index) - 8)[0] != _MAGIC:
        raise ValueError("not a TF checkpoint index (no table footer)")
    footer = index[-48:]
    _, pos = _varint(footer, 0)
    _, pos = _varint(footer, pos)  # the metaindex handle (unused), then the index block's
    index_handle = footer[pos:]
    entries = [kv for _, handle in _block(index, index_handle) for kv in _block(index, handle)]
    header = _proto(dict(entries).get(b"", b""))
    shards = header.get(1, [1])[0]
    data = {}
    values = {}
    for key, raw in entries:
        if not key:
            continue
        entry = _proto(raw)
        dtype = _DTYPES.get(entry.get(1, [0])[0])
        if dtype is None or entry.get(7):  # an unsupported dtype, or a sliced (partitioned) tensor
            continue
        shape = tuple(_proto(d).get(1, [0])[0] for d in _proto(entry[2][0]).get(2, [])) if 2 in entry else ()
        shard = entry.get(3, [0])[0]
        if shard not in data:
            with open(f"{prefix}.data-{shard:05d}-of-{shards:05d}", "rb") as f:
                data[shard] = f.read()
        offset, size = entry.get(4, [0])[0], entry.get(5, [0])[0]
        values[key.decode()] = np.frombuffer(data[shard][offset:offset + size], dtype).reshape(shape).copy()
    return values


def generator_names(scale):
    """[(our variable path under `generator/`, official name)] for every weight of a Generator of
    this scale, in its `weights` order (TensorFlow-free: the JAX trainer reads with it too)."""
    pairs = []

    def conv(ours, scope, bn_scope):
        pairs.extend([(f"{ours}/conv/kernel", f"{scope}/kernel"), (f"{ours}/conv/bias", f"{scope}/bias")])
        if bn_scope:
            pairs.extend((f"{ours}/bn/{k}", f"{bn_scope}/batch_normalization/{k}") for k in _BN)

    if scale > 1:
        pairs += [("deconv_ir/kernel", "Generator/deconv_ir/deconv1/kernel"),
                  ("deconv_vis/kernel", "Generator/deconv_vis/deconv1/kernel")]
    conv("encoder_conv1_1", "Generator/encoder/conv1_1", "Generator/encoder/b0")
    for k in range(1, 5):
        conv(f"encoder_dense_block_conv{k}", f"Generator/encoder/dense_block_conv{k}", f"Generator/encoder/b{k}")
    for k, (scope, bn) in enumerate(_DECODER, start=1):
        conv(f"decoder_conv2_{k}", f"Generator/decoder/{scope}", bn and f"Generator/decoder/{bn}")
    return pairs


def generator_variables(gen):
    """[(our variable, official name)] for every weight of `gen` (Generator)."""
    by_path = {v.path.split("generator/", 1)[1]: v for v in gen.weights}
    return [(by_path[ours], name) for ours, name in generator_names(gen.scale)]


def discriminator_variables(d, scope):
    """[(our variable, official name)] for a Discriminator under the official `scope`."""
    pairs = []
    for k, layer in enumerate(d.convs):
        pairs += [(layer.conv.kernel, f"{scope}/conv{k + 1}/kernel"),
                  (layer.conv.bias, f"{scope}/conv{k + 1}/bias")]
        if layer.bn is not None:
            pairs += [(getattr(layer.bn, n), f"{scope}/b{k}/batch_normalization/{n}") for n in _BN]
    return pairs + [(d.dense.kernel, f"{scope}/flatten1/dense/kernel"),
                    (d.dense.bias, f"{scope}/flatten1/dense/bias")]


def _assign(pairs, values, prefix, what):
    """Checks every name and shape first, then assigns (all or nothing)."""
    for var, name in pairs:
        if name not in values:
            raise InputError(prefix, f"holds no variable {name!r}: not an official DDcGAN {what} checkpoint")
        if tuple(values[name].shape) != tuple(var.shape):
            raise InputError(prefix, f"variable {name} has shape {tuple(values[name].shape)}, "
                                     f"the model expects {tuple(var.shape)}")
    for var, name in pairs:
        var.assign(np.asarray(values[name], dtype=var.dtype))


def checkpoint_scale(values):
    """4 when the checkpoint has the multi-resolution transposed convs, else 1."""
    return C.SCALE if "Generator/deconv_ir/deconv1/kernel" in values else 1


def load_generator(path, bn_mode=None, stretch=None):
    """Generator (official decoder, scale 4 or 1 as the checkpoint has it) with the weights of
    an official TF1 checkpoint; bn_mode as in ddcgan_tf.checkpoint.load_generator. Its outputs
    are written stretched unless stretch=False: the official test code saved them with
    scipy.misc.imsave, which min-max stretches (so ddcgan-fuse writes the official files)."""
    from ddcgan_tf.generator import Generator

    prefix = find(path) or os.fspath(path)
    values = read(prefix)
    gen = Generator(scale=checkpoint_scale(values), official_decoder=True, bn_mode=bn_mode or "batch",
                    stretch=True if stretch is None else stretch)
    gen.build()
    _assign(generator_variables(gen), values, prefix, "generator")
    return gen


def load_networks(model, path):
    """Warm start of a compiled DDcGAN from an official TF1 checkpoint -> the names loaded
    ("generator", then "dv", "di" when the checkpoint holds them). Optimizers stay fresh."""
    prefix = find(path) or os.fspath(path)
    values = read(prefix)
    gen = model.generator
    scale = checkpoint_scale(values)
    if gen.scale != scale:
        raise InputError(prefix, f"was trained with scale={scale}, this run has scale={gen.scale}")
    if not gen.official_decoder:
        raise InputError(prefix, "was trained with official_decoder=True, this run has official_decoder=False")
    _assign(generator_variables(gen), values, prefix, "generator")
    loaded = ["generator"]
    for name, scope in DISCRIMINATOR_SCOPES.items():
        if any(k.startswith(scope + "/") for k in values):
            _assign(discriminator_variables(getattr(model, name), scope), values, prefix, "discriminator")
            loaded.append(name)
    return loaded
