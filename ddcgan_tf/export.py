"""SavedModel export of a generator, for TensorFlow Serving or any `tf.saved_model.load` user.

The SavedModel (written with Keras 3's `keras.export.ExportArchive`) has two signatures,
`serve` and `serving_default` (the same function):

  inputs   vis  float32 [N, H, W, 1]          visible image(s) in [0, 1]
           ir   float32 [N, H/s, W/s, 1]      infrared image(s) in [0, 1], s = the scale (4)
  output   fused  float32 [N, H, W, 1]        fused image(s) in [0, 1]   (output key "fused")

and a third, `serve_colour`, for colour visible images (ddcgan_tf.ycbcr, `ddcgan-fuse --colour`):

  inputs   vis_rgb float32 [N, H, W, 3]       visible image(s), RGB in [0, 1]
           ir   float32 [N, H/s, W/s, 1]
  output   fused  float32 [N, H, W, 3]        RGB: the fused luminance with the visible chroma

N, H and W are free (any size whose H and W are multiples of s); a size mismatch fails with an
InvalidArgumentError that says what the shapes must be. Loading it needs TensorFlow only, not
ddcgan_tf:

    m = tf.saved_model.load(DIR)
    fused = m.signatures["serving_default"](vis=v, ir=i)["fused"]

BN statistics are baked in as the generator's `bn_mode` when exporting (see
`export_saved_model`): "batch" normalises every image with its own statistics (each image of a
request batch separately, exactly as `Fuser` fuses one image), "moving" uses the stored moving
averages (a fixed function; request images are independent anyway). So is its `stretch`: when
True every fused image is min-max stretched to [0, 1] on its own, what ddcgan-fuse writes
(before the rounding to 8 bits).

The generator config is stored twice: as the variable collection `ddcgan_config` (one string
variable holding JSON: `json.loads(m.ddcgan_config[0].numpy())`) and as the plain file
`assets.extra/ddcgan_config.json` (readable without TensorFlow), e.g.
{"scale": 4, "official_decoder": true, "bn_mode": "batch", "stretch": false, "format": "ddcgan_tf.saved_model/1",
"signature": {...}}.
"""
import json
import os
import re
import shutil
import tempfile

import tensorflow as tf

from ddcgan_tf.errors import InputError
from ddcgan_tf.images import LUMA_WEIGHTS, check_output_dir, remove_stale_temps, temp_prefix

CONFIG_NAME = "ddcgan_config"
CONFIG_FILE = os.path.join("assets.extra", CONFIG_NAME + ".json")
OUTPUT_KEY = "fused"
SIGNATURES = ("serve", "serving_default")
COLOUR_SIGNATURE = "serve_colour"
FORMAT = "ddcgan_tf.saved_model/1"


def generator_config(generator):
    """The config stored with an export: what rebuilds the network and how it normalises."""
    s = int(generator.scale)
    image = lambda shape: f"float32 [{shape}] in [0, 1]"
    return {"scale": s, "official_decoder": bool(generator.official_decoder),
            "bn_mode": str(generator.bn_mode), "stretch": bool(generator.stretch), "format": FORMAT,
            "signature": {"inputs": {"vis": image("N, H, W, 1"), "ir": image(f"N, H/{s}, W/{s}, 1")},
                          "outputs": {OUTPUT_KEY: image("N, H, W, 1")}},
            COLOUR_SIGNATURE: {"inputs": {"vis_rgb": image("N, H, W, 3"), "ir": image(f"N, H/{s}, W/{s}, 1")},
                               "outputs": {OUTPUT_KEY: image("N, H, W, 3")}}}


def serving_function(generator):
    """fn(vis, ir) -> {"fused": ...}: the exported computation (plain Python, not traced)."""
    scale = int(generator.scale)

    def one(vis, ir):
        return generator((vis, ir), training=False)

    def serve(vis, ir):
        vshape, ishape = tf.shape(vis), tf.shape(ir)
        checks = [
            tf.debugging.assert_equal(
                vshape[0], ishape[0], message="vis and ir must hold the same number of images"),
            tf.debugging.assert_equal(
                vshape[1:3] % scale, tf.zeros([2], tf.int32),
                message=f"vis height and width must be multiples of {scale}"),
            tf.debugging.assert_equal(
                vshape[1:3], ishape[1:3] * scale,
                message=f"ir must be 1/{scale} of the vis height and width"),
        ]
        with tf.control_dependencies(checks):
            vis, ir = tf.identity(vis), tf.identity(ir)
        if generator.bn_mode == "batch":
            # Per-image statistics, as Fuser: images of one request must not share BN moments.
            fused = tf.map_fn(lambda pair: one(pair[0][None], pair[1][None])[0], (vis, ir),
                              fn_output_signature=tf.TensorSpec((None, None, 1), tf.float32))
        else:
            fused = one(vis, ir)
        if generator.stretch:  # images.to_uint8(stretch=True) per image, before its rounding
            lo = tf.reduce_min(fused, axis=(1, 2, 3), keepdims=True)
            span = tf.reduce_max(fused, axis=(1, 2, 3), keepdims=True) - lo
            fused = tf.where(span > 0, (fused - lo) / tf.where(span > 0, span, 1.0), 0.0)
        return {OUTPUT_KEY: fused}

    return serve


def colour_serving_function(serve):
    """fn(vis_rgb, ir) -> {"fused": RGB}: `serve` (the grey function above) applied to the BT.601
    luminance, the visible chroma put back as ddcgan_tf.ycbcr.keep_chroma does (in TF ops)."""
    luma = tf.constant(LUMA_WEIGHTS, tf.float32)

    def serve_colour(vis_rgb, ir):
        y = tf.reduce_sum(vis_rgb * luma, axis=-1, keepdims=True)
        fused = serve(y, ir)[OUTPUT_KEY]
        return {OUTPUT_KEY: _to_gamut(fused, vis_rgb - y)}

    return serve_colour


def _to_gamut(mean, colour):
    """ihs.to_gamut in TF ops: mean + t * colour with the largest t <= 1 keeping [0, 1]."""
    m = tf.clip_by_value(mean, 0.0, 1.0)
    safe = tf.where(colour == 0, tf.ones_like(colour), colour)
    room = tf.where(colour > 0, (1.0 - m) / safe, tf.where(colour < 0, m / -safe, float("inf")))
    t = tf.clip_by_value(tf.reduce_min(room, axis=-1, keepdims=True), 0.0, 1.0)
    return tf.clip_by_value(m + t * colour, 0.0, 1.0)


def export_saved_model(generator, output_dir, overwrite=False):
    """Writes `generator` as a SavedModel directory at `output_dir` (see the module docstring).

    The BN mode baked into the export is `generator.bn_mode` at export time: "batch" (per-image
    statistics, the official way of fusing and the default of `load_generator`) or "moving"
    (the stored moving averages); choose it with `load_generator(path, bn_mode=...)`. The mode
    is recorded in the stored config.

    Written atomically: the export goes to a temporary sibling directory that is renamed into
    place once complete. An existing `output_dir` raises InputError unless `overwrite=True` and
    it is an earlier export or an empty directory (nothing else is ever deleted); it is then
    moved aside, replaced and deleted (a crash in between leaves it as a `.tmp-old-*`
    sibling, never a half-written export at `output_dir`; a killed export's `.tmp-export-*`
    directory is removed by the next export beside it). Returns the generator config dict.
    """
    import keras

    output_dir = os.path.abspath(os.fspath(output_dir))
    parent = os.path.dirname(output_dir)
    check_output_dir(parent, create=True)  # `--output exported/ddcgan` makes exported/, as train makes runs/
    if os.path.lexists(output_dir) and not overwrite:
        raise InputError(output_dir, "already exists (pass --overwrite / overwrite=True to replace it)")
    if os.path.lexists(output_dir) and not _replaceable(output_dir):
        raise InputError(output_dir, f"is not a previous export (no saved_model.pb and {CONFIG_FILE}); "
                                     "--overwrite replaces only an export or an empty directory, so "
                                     "choose another --output")
    if not generator.built:
        generator.build()
    config = generator_config(generator)
    spec = lambda name: tf.TensorSpec((None, None, None, 1), tf.float32, name=name)

    archive = keras.export.ExportArchive()
    archive.track(generator)
    serve = serving_function(generator)
    archive.add_endpoint(name="serve", fn=serve, input_signature=[spec("vis"), spec("ir")])
    archive.add_endpoint(name=COLOUR_SIGNATURE, fn=colour_serving_function(serve),
                         input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32, name="vis_rgb"),
                                          spec("ir")])
    archive.add_variable_collection(
        CONFIG_NAME, [tf.Variable(json.dumps(config), trainable=False, name=CONFIG_NAME)])

    remove_stale_temps(parent)  # a killed export's directory
    tmp = tempfile.mkdtemp(dir=parent, prefix=temp_prefix("export-"))
    old = moved = None
    try:
        archive.write_out(tmp, verbose=False)  # serve + serving_default (= the first endpoint)
        os.makedirs(os.path.join(tmp, os.path.dirname(CONFIG_FILE)), exist_ok=True)
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        if os.path.lexists(output_dir):
            old = tempfile.mkdtemp(dir=parent, prefix=".tmp-old-")
            moved = os.path.join(old, "previous")
            os.rename(output_dir, moved)
        os.rename(tmp, output_dir)
    except BaseException as e:
        if moved is not None and os.path.lexists(moved) and not os.path.lexists(output_dir):
            os.rename(moved, output_dir)  # put the previous export back
        if old is not None and not os.path.lexists(moved):
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise InputError(output_dir, f"cannot write ({e.strerror or e})") from None
        if isinstance(e, tf.errors.OpError):  # TensorFlow's own file writes: a full disk was reported
            # as ResourceExhaustedError ("out of memory" to the CLI), a file-size limit as a traceback
            raise InputError(output_dir, f"cannot write ({_os_reason(e.message)})") from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return config


def _os_reason(message):
    """The operating system's words at the end of a TensorFlow file error ("...; No space left
    on device [Op:SaveV2]" -> "No space left on device"), else its first line."""
    text = re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", str(message).strip())
    tail = text.rsplit(";", 1)[-1].strip() if ";" in text else text.splitlines()[0] if text else ""
    return tail[:160] or "unknown error"


def _replaceable(path):
    """Whether --overwrite may delete `path`: an earlier export (its SavedModel file and our
    config) or an empty directory; never a training run or any other folder or file."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    try:
        entries = os.listdir(path)
    except OSError:
        return False
    return not entries or (os.path.isfile(os.path.join(path, "saved_model.pb"))
                           and os.path.isfile(os.path.join(path, CONFIG_FILE)))


def read_config(saved_model_dir):
    """The generator config of an export (from assets.extra, without loading the graph)."""
    path = os.path.join(os.fspath(saved_model_dir), CONFIG_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(path, f"not a ddcgan_tf SavedModel export ({type(e).__name__})") from None
