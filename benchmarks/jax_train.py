"""DDcGAN training in JAX, for a GPU machine that has JAX but no TensorFlow.

The GPU machines this project is sometimes lent carry JAX and no TensorFlow, and a TensorFlow
wheel with its CUDA libraries is far over what can be carried there. This script transcribes
`ddcgan_tf.ddcgan.DDcGAN.train_step` (the adaptive schedule, paper Algorithm 1 with the numbers
of `ddcgan_tf.config`) and the three networks into JAX, and reads and writes the TF checkpoint
format of `ddcgan_tf.checkpoint`: it starts from a ckpt-*.h5 / train_state.h5 written by
`ddcgan-train` (or by `--write_init` here, which needs TensorFlow) and writes ckpt-*.h5,
steps.jsonl and config.json in a run directory, so `ddcgan-train` resumes the run and
`benchmarks/validate_tno.py` / `benchmarks/ship.py` score and ship it as any other.
tests/test_jax_parity.py checks, on the CPU, that one batch here updates every variable,
counter and optimizer slot as the TF step does. `Fuser` is the inference call, so checkpoints
are scored where they are made (validate_tno.py --backend jax, gpu_job/choose.py);
tests/test_gpu_job.py checks it against ddcgan_tf.fuse.Fuser.

The batches are `ddcgan-train`'s (`ddcgan_tf.data.batch_stream`: the official per-epoch
reshuffle, batch k a function of the data seed alone), so a run moved between this script and
`ddcgan-train` in either direction goes on with the batches it would have had; the seed is
recorded in config.json and kept on resume. Differences, by design: the whole schedule of a
batch is one jitted function with `lax.while_loop` repeats (as `train_step` is one
tf.function), and the host fetches the step logs every `--log_every` batches. Float32 throughout; XLA on the GPU uses
TF32 convolutions by default, as TensorFlow does on the same GPU.

  python benchmarks/jax_train.py --data tno.h5 --init checkpoints/vis-ir/train_state.h5 \\
      --model_dir runs/gpu --steps 5000 --checkpoint_every 500 [--preset official --max_repeats 20]
"""
import argparse
import dataclasses
import functools
import json
import os
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ddcgan_tf import config as C  # noqa: E402  (TensorFlow-free modules only)
from ddcgan_tf import official  # noqa: E402
from ddcgan_tf.checkpoint import latest_checkpoint, read_configs, resolve  # noqa: E402
from ddcgan_tf.data import batch_stream, check_seed  # noqa: E402
from ddcgan_tf.errors import InputError  # noqa: E402
from ddcgan_tf.images import atomic_write  # noqa: E402
from ddcgan_tf.signals import StopRequest  # noqa: E402
from ddcgan_tf.record import (JAX_TRAINER, RECORD_FILE, add_segment, cpu_name, read_record,  # noqa: E402
                              write_record)

NETS = ("generator", "dv", "di")
OPTS = ("g", "g_adv", "dv", "di")
STATS = ("moving_mean", "moving_variance")


# ---------------------------------------------------------------- checkpoint I/O (TF format)
def read_state(path):
    """{group: [(path, array), ...]} in file order, and the file's attributes."""
    with h5py.File(path, "r") as f:
        groups = {g: [(f[g][k].attrs["path"], f[g][k][()]) for k in sorted(f[g].keys())] for g in f}
        attrs = dict(f.attrs)
    return groups, attrs


def write_state(path, groups, attrs):
    """Writes the layout of ddcgan_tf.checkpoint.save_state, atomically (images.atomic_write)."""
    def write(tmp):
        with h5py.File(tmp, "w") as f:
            for g, items in groups.items():
                grp = f.create_group(g)
                for k, (p, value) in enumerate(items):
                    grp.create_dataset(f"{k:06d}", data=np.asarray(value)).attrs["path"] = p
            for k, v in attrs.items():
                f.attrs[k] = v

    atomic_write(path, write, suffix=".h5")


def _short(path, net):
    return path.split(f"/{net}/", 1)[1]


def _leaf(path):
    return path.rsplit("/", 1)[-1]


def _g_trainable(groups):
    """Generator trainable names in file order: the order of the RMSProp slots."""
    return [_short(p, "generator") for p, _ in groups["generator"] if _leaf(p) not in STATS]


def unpack(groups):
    """TF checkpoint groups -> the pytree the jitted step works on (numpy leaves)."""
    import jax.numpy as jnp
    state = {}
    for net in NETS:
        items = {_short(p, net): v for p, v in groups[net]}
        state[net] = {k: jnp.asarray(v) for k, v in items.items() if _leaf(k) not in STATS}
        state[net + "_bn"] = {k: jnp.asarray(v) for k, v in items.items() if _leaf(k) in STATS}
    for name in ("g", "g_adv"):
        slots = [v for p, v in groups[f"opt_{name}"] if p.endswith("_velocity")]
        state[f"opt_{name}"] = dict(zip(_g_trainable(groups), (jnp.asarray(v) for v in slots)))
    for name in OPTS:
        vals = {_leaf(p): v for p, v in groups[f"opt_{name}"]}
        state[f"it_{name}"] = jnp.asarray(vals["iteration"], jnp.int32)
        state[f"lr_{name}"] = jnp.asarray(vals["learning_rate"], jnp.float32)
    counters = {_leaf(p): v for p, v in groups["counters"]}
    state["batch_count"] = jnp.asarray(counters["batch_count"], jnp.int32)
    state["optimizer_steps"] = jnp.asarray(counters["optimizer_steps"], jnp.int32)
    return state


def pack(state, template):
    """The pytree back into the template's groups (same order, paths, dtypes)."""
    state = {k: (np.asarray(v) if not isinstance(v, dict) else {kk: np.asarray(vv) for kk, vv in v.items()})
             for k, v in state.items()}
    out = {}
    for net in NETS:
        merged = {**state[net], **state[net + "_bn"]}
        out[net] = [(p, merged[_short(p, net)].astype(v.dtype)) for p, v in template[net]]
    for name in OPTS:
        items = []
        slots = iter([state[f"opt_{name}"][k] for k in _g_trainable(template)]) if name in ("g", "g_adv") else None
        for p, v in template[f"opt_{name}"]:
            leaf = _leaf(p)
            if leaf == "iteration":
                value = state[f"it_{name}"]
            elif leaf == "learning_rate":
                value = state[f"lr_{name}"]
            else:
                value = next(slots)
            items.append((p, np.asarray(value).astype(v.dtype)))
        out[f"opt_{name}"] = items
    out["counters"] = [(p, np.asarray(state[_leaf(p)]).astype(v.dtype))
                       for p, v in template["counters"]]
    return {g: out[g] for g in template}  # the template's group order


# ---------------------------------------------------------------- networks (ddcgan_tf.layers etc.)
def _jax():
    import jax
    import jax.numpy as jnp
    return jax, jnp


def conv_block(P, S, name, x, stride=1, bn=True, relu=True, update=True, skip_bn=False, moving=False):
    """ReflectConv: reflect pad 1, 3x3 VALID conv + bias, BN, ReLU. BN uses the batch's
    statistics (and updates the moving averages if `update`), or with `moving` the moving
    averages (layers.BatchNorm: training, mode "batch", mode "moving")."""
    jax, jnp = _jax()
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    x = jax.lax.conv_general_dilated(x, P[f"{name}/conv/kernel"], (stride, stride), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = x + P[f"{name}/conv/bias"]
    if bn and not skip_bn:
        mm, mv = f"{name}/bn/moving_mean", f"{name}/bn/moving_variance"
        if moving:
            mean, var = S[mm], S[mv]
        else:
            mean = jnp.mean(x, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))  # biased, as tf.nn.moments
        x = (x - mean) * jax.lax.rsqrt(var + C.BN_EPSILON) * P[f"{name}/bn/gamma"] + P[f"{name}/bn/beta"]
        if update and not moving:
            m = C.BN_MOMENTUM
            S = {**S, mm: m * S[mm] + (1 - m) * jax.lax.stop_gradient(mean),
                 mv: m * S[mv] + (1 - m) * jax.lax.stop_gradient(var)}
    return (jax.nn.relu(x) if relu else x), S


def deconv(kernel, x, stride):
    """tf.nn.conv2d_transpose(x, kernel[h, w, out, in], stride, SAME): the gradient of the conv."""
    jax, jnp = _jax()
    n, h, w, _ = x.shape
    conv = lambda y: jax.lax.conv_general_dilated(y, kernel, (stride, stride), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = jax.ShapeDtypeStruct((n, h * stride, w * stride, kernel.shape[2]), x.dtype)
    return jax.linear_transpose(conv, out)(x)[0]


def generator(P, S, vis, ir, scale=C.SCALE, official_decoder=True, update=True, moving=False):
    """ddcgan_tf.generator.Generator.call(training=True); with update=False, the inference call
    (BN mode "batch"; "moving" with moving=True)."""
    jax, jnp = _jax()
    kw = dict(update=update, moving=moving)
    if scale > 1:
        ir, vis = deconv(P["deconv_ir/kernel"], ir, scale), deconv(P["deconv_vis/kernel"], vis, 1)
    x, S = conv_block(P, S, "encoder_conv1_1", jnp.concatenate([vis, ir], axis=3), **kw)
    for k in range(1, 5):
        y, S = conv_block(P, S, f"encoder_dense_block_conv{k}", x, **kw)
        x = jnp.concatenate([y, x], axis=3)
    if official_decoder:
        x, S = conv_block(P, S, "decoder_conv2_1", x, skip_bn=True, **kw)
    for k in range(1, 5):
        x, S = conv_block(P, S, f"decoder_conv2_{k}", x, **kw)
    x, S = conv_block(P, S, "decoder_conv2_5", x, bn=False, relu=False, **kw)
    return jnp.tanh(x) / 2.0 + 0.5, S


def discriminator(P, S, x):
    """ddcgan_tf.discriminator.Discriminator.call(training=True)."""
    jax, jnp = _jax()
    x, S = conv_block(P, S, "conv1", x, stride=2, bn=False)
    x, S = conv_block(P, S, "conv2", x, stride=2)
    x, S = conv_block(P, S, "conv3", x, stride=2)
    x = x.reshape(x.shape[0], -1) @ P["flatten1_dense/kernel"] + P["flatten1_dense/bias"]
    return jnp.tanh(x) / 2.0 + 0.5, S


# ---------------------------------------------------------------- fusing (ddcgan_tf.fuse.Fuser)
def read_generator(path):
    """(weights, BN statistics, model_config) of the generator in a checkpoint, train_state or
    generator file, or a directory holding one (ddcgan_tf.checkpoint.resolve), or in an official
    TF1 checkpoint (read with numpy: official.read_bundle); numpy dicts keyed as `generator`
    reads them."""
    prefix = official.find(path)
    if prefix:
        values = official.read(prefix, tensorflow=False)
        scale = official.checkpoint_scale(values)
        items = {}
        for ours, name in official.generator_names(scale):
            if name not in values:
                raise InputError(prefix, f"holds no variable {name!r}: not an official DDcGAN generator checkpoint")
            items[ours] = np.asarray(values[name], np.float32)
        model_config = {"scale": scale, "official_decoder": True, "bn_mode": "batch"}
    else:
        path = resolve(path)
        model_config, _ = read_configs(path)
        with h5py.File(path, "r") as f:
            if "generator" not in f:
                raise InputError(path, "holds no generator weights")
            g = f["generator"]
            items = {g[k].attrs["path"].split("generator/", 1)[1]: g[k][()] for k in g}
    P = {k: v for k, v in items.items() if _leaf(k) not in STATS}
    S = {k: v for k, v in items.items() if _leaf(k) in STATS}
    return P, S, model_config


@functools.lru_cache(maxsize=None)
def _fuse_fn(scale, official_decoder, moving):
    """One jitted inference function per generator option, shared by every Fuser: its compiled
    sizes serve every checkpoint that is scored."""
    jax, _ = _jax()
    return jax.jit(lambda P, S, v, i: generator(P, S, v, i, scale=scale, official_decoder=official_decoder,
                                                update=False, moving=moving)[0])


class Fuser:
    """ddcgan_tf.fuse.Fuser in JAX, for machines without TensorFlow: vis (H, W) and ir
    (H/s, W/s) in [0, 1] -> fused (H, W) float32. bn_mode "batch" (the image's own statistics,
    the default of ddcgan-fuse) or "moving". One compile per image size."""

    def __init__(self, path, bn_mode="batch"):
        if bn_mode not in ("batch", "moving"):
            raise ValueError(f"bn_mode must be 'batch' or 'moving', not {bn_mode!r}")
        _, jnp = _jax()
        P, S, mc = read_generator(path)
        self.scale = int(mc.get("scale", C.SCALE))
        self._P = {k: jnp.asarray(v) for k, v in P.items()}
        self._S = {k: jnp.asarray(v) for k, v in S.items()}
        self._fn = _fuse_fn(self.scale, bool(mc.get("official_decoder", True)), bn_mode == "moving")

    def __call__(self, vis, ir):
        vis, ir = np.asarray(vis, np.float32), np.asarray(ir, np.float32)
        if ir.shape != (vis.shape[0] // self.scale, vis.shape[1] // self.scale) or vis.shape[0] % self.scale \
                or vis.shape[1] % self.scale:
            raise ValueError(f"sizes {vis.shape} and {ir.shape} do not fit the scale {self.scale}")
        return np.asarray(self._fn(self._P, self._S, vis[None, ..., None], ir[None, ..., None]))[0, ..., 0]


# ---------------------------------------------------------------- losses (ddcgan_tf.losses)
def gradient(img):
    """grad of Eq. 8: the official 8-neighbour kernel, SAME (zero) padding."""
    jax, jnp = _jax()
    k = jnp.asarray(C.GRADIENT_KERNEL, img.dtype).reshape(3, 3, 1, 1)
    return jax.lax.conv_general_dilated(img, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))



def downsample(img, scale):
    """log2(scale) 3x3 stride-2 average pools, SAME, padding excluded from the averages."""
    jax, jnp = _jax()
    for _ in range({1: 0, 2: 1, 4: 2, 8: 3}[int(scale)]):
        win, strides = (1, 3, 3, 1), (1, 2, 2, 1)
        total = jax.lax.reduce_window(img, 0.0, jax.lax.add, win, strides, "SAME")
        ones = jnp.ones((1,) + img.shape[1:], img.dtype)  # the count depends on the shape alone
        count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, win, strides, "SAME")
        img = total / count
    return img


def _log(x):
    return _jax()[1].log(x + C.EPS)


def d_loss(real, fake):
    jnp = _jax()[1]
    return -jnp.mean(_log(real)) - jnp.mean(_log(1.0 - fake))


# ---------------------------------------------------------------- the schedule (DDcGAN.train_step)
class Trainer:
    """One batch of the adaptive schedule as a jitted pure function of (state, vis, ir)."""

    def __init__(self, cfg, steps_per_epoch, scale=C.SCALE, official_decoder=True):
        self.cfg, self.spe, self.scale = cfg, int(steps_per_epoch), scale
        self.official_decoder = official_decoder
        jax, _ = _jax()
        self.step = jax.jit(self._batch)

    # pieces -----------------------------------------------------------------
    def _lr(self, st):
        jnp = _jax()[1]
        cfg = self.cfg
        count = st["optimizer_steps"] if cfg.decay_counts == "optimizer_steps" else st["batch_count"]
        return jnp.float32(cfg.learning_rate) * jnp.power(
            jnp.float32(cfg.lr_decay_rate), count.astype(jnp.float32) / jnp.float32(self.spe))

    def _gen(self, st, P=None):
        fused, S = generator(st["generator"] if P is None else P, st["generator_bn"], *st["_batch"],
                             scale=self.scale, official_decoder=self.official_decoder,
                             update=self.cfg.update_bn_statistics)
        return fused, S

    def _g_forward(self, st, P=None):
        """(losses dict, new state with BN statistics, (fused, fused_lr)) like DDcGAN._g_forward."""
        fused, gS = self._gen(st, P)
        fused_lr = downsample(fused, self.scale)
        out, new = self._output_losses({**st, "generator_bn": gS}, fused, fused_lr)
        return out, new, (fused, fused_lr)

    def _output_losses(self, st, fused, fused_lr):
        """(losses dict, new state with D's BN statistics) of a generator output: DDcGAN._output_losses."""
        jnp = _jax()[1]
        cfg = self.cfg
        vis, ir = st["_batch"]
        dv_fake, dvS = discriminator(st["dv"], st["dv_bn"], fused)
        di_fake, diS = discriminator(st["di"], st["di_bn"], fused_lr)
        dv_real, dvS = discriminator(st["dv"], dvS, vis)
        di_real, diS = discriminator(st["di"], diS, ir)
        g_adv = -jnp.mean(_log(dv_fake)) - jnp.mean(_log(di_fake))
        ir_term = jnp.mean(jnp.sum(jnp.square(fused_lr - ir), axis=(1, 2)))
        grad_term = jnp.mean(jnp.sum(jnp.abs(gradient(fused) - gradient(vis)), axis=(1, 2)))
        g_loss = g_adv + cfg.content_weight * (cfg.ir_weight * ir_term + cfg.grad_weight * grad_term)
        out = {"g_loss": g_loss, "g_adv": g_adv, "ir_loss": ir_term, "grad_loss": grad_term,
               "dv_loss": d_loss(dv_real, dv_fake), "di_loss": d_loss(di_real, di_fake),
               "dv_real": jnp.mean(dv_real), "dv_fake": jnp.mean(dv_fake),
               "di_real": jnp.mean(di_real), "di_fake": jnp.mean(di_fake)}
        return out, {**st, "dv_bn": dvS, "di_bn": diS}

    def _d_loss(self, st, net, P, real, fake):
        """-E log D(real) - E log(1 - D(fake)); D's BN statistics updated by both calls."""
        r, S = discriminator(P, st[net + "_bn"], real)
        f, S = discriminator(P, S, fake)
        return d_loss(r, f), S

    def _apply(self, st, net, opt, grads, lr):
        """Keras SGD (dv, di) or RMSProp (g, g_adv: TF1 accumulator start), then clipping."""
        jax, jnp = _jax()
        P = st[net]
        if opt in ("dv", "di"):
            newP = {k: P[k] - lr * grads[k] for k in P}
        else:
            rho, eps = C.RMSPROP_RHO, C.RMSPROP_EPSILON
            vel = {k: rho * st[f"opt_{opt}"][k] + (1 - rho) * jnp.square(grads[k]) for k in P}
            newP = {k: P[k] - lr * grads[k] / jnp.sqrt(vel[k] + eps) for k in P}
            st = {**st, f"opt_{opt}": vel}
        if self.cfg.clip_value is not None:
            c = self.cfg.clip_value
            newP = {k: jnp.clip(v, -c, c) for k, v in newP.items()}
        return {**st, net: newP, f"it_{opt}": st[f"it_{opt}"] + 1, f"lr_{opt}": lr,
                "optimizer_steps": st["optimizer_steps"] + 1}

    def _d_update(self, st, net, real, fake):
        jax, _ = _jax()
        lr = self._lr(st)
        (loss, S), grads = jax.value_and_grad(
            lambda P: self._d_loss(st, net, P, real, fake), has_aux=True)(st[net])
        st = {**st, net + "_bn": S}
        return self._apply(st, net, net, grads, lr)

    def _g_update(self, st, opt, key):
        jax, _ = _jax()
        lr = self._lr(st)

        def loss(P):
            out, new, _ = self._g_forward(st, P)
            return out[key], new

        (_, new), grads = jax.value_and_grad(loss, has_aux=True)(st["generator"])
        st = {**st, **{k: new[k] for k in ("generator_bn", "dv_bn", "di_bn")}}
        return self._apply(st, "generator", opt, grads, lr)

    # the batch ---------------------------------------------------------------
    def _batch(self, st, vis, ir):
        jax, jnp = _jax()
        lax = jax.lax
        cfg = self.cfg
        st = {**st, "_batch": (vis, ir)}
        n_max = jnp.float32(cfg.max_repeats)
        one, zero = jnp.float32(1.0), jnp.float32(0.0)

        def d_updates(st):
            """One Dv and one Di step on one generator output -> (state, (fused, fused_lr))."""
            fused, gS = self._gen(st)
            st = {**st, "generator_bn": gS}
            fused = lax.stop_gradient(fused)
            fused_lr = downsample(fused, self.scale)
            st = self._d_update(st, "dv", vis, fused)
            return self._d_update(st, "di", ir, fused_lr), (fused, fused_lr)

        def first_g(st):
            """One G step on L_G -> (state, losses after it, the output they came from)."""
            st = self._g_update(st, "g", "g_loss")
            out, st, fakes = self._g_forward(st)
            return st, out, tuple(lax.stop_gradient(f) for f in fakes)

        # 2. Discriminators repeat while losing (on the output of the forward pass before).
        def repeat_d(st, net, real, fake, loss):
            def body(c):
                st, _, steps = c
                st = self._d_update(st, net, real, fake)
                loss, S = self._d_loss(st, net, st[net], real, fake)
                return {**st, net + "_bn": S}, loss, steps + 1
            return lax.while_loop(lambda c: (c[1] > cfg.l_max) & (c[2] < n_max), body, (st, loss, one))

        def repeat_ds(st, out, fakes):
            out = dict(out)
            st, out["dv_loss"], dv_steps = repeat_d(st, "dv", vis, fakes[0], out["dv_loss"])
            st, out["di_loss"], di_steps = repeat_d(st, "di", ir, fakes[1], out["di_loss"])
            return st, out, dv_steps, di_steps

        # 3-4. G repeats: adversarial while a D wins clearly, then full while L_G > L_Gmax.
        def repeat_g(st, out, steps, opt, key, keep_going):
            def body(c):
                st, _, steps = c
                st = self._g_update(st, opt, key)
                out, st, _ = self._g_forward(st)
                return st, out, steps + 1
            return lax.while_loop(lambda c: keep_going(c[1]) & (c[2] < n_max), body, (st, out, steps))

        def repeat_gs(st, out):
            g_max = jnp.float32(cfg.g_max) * (out["g_loss"] if cfg.g_max_relative else 1.0)
            st, out, g_steps = repeat_g(st, out, one, "g_adv", "g_adv",
                                        lambda o: (o["dv_loss"] < cfg.l_min) | (o["di_loss"] < cfg.l_min))
            return repeat_g(st, out, g_steps, "g", "g_loss", lambda o: o["g_loss"] > g_max)

        if cfg.alternate_batches:  # official `if batch % 2 == 0`: D batches and G batches
            def d_batch(st):
                st, fakes = d_updates(st)
                out, st = self._output_losses(st, *fakes)
                st, out, dv_steps, di_steps = repeat_ds(st, out, fakes)
                return st, out, dv_steps, di_steps, zero

            def g_batch(st):
                st, out, _ = first_g(st)
                st, out, g_steps = repeat_gs(st, out)
                return st, out, zero, zero, g_steps

            index = st["batch_count"] % self.spe
            st, out, dv_steps, di_steps, g_steps = lax.cond(index % 2 == 0, d_batch, g_batch, st)
        else:  # 1. Dv, Di and G once each, then the repeats
            st, _ = d_updates(st)
            st, out, fakes = first_g(st)
            st, out, dv_steps, di_steps = repeat_ds(st, out, fakes)
            st, out, g_steps = repeat_gs(st, out)

        st = {k: v for k, v in st.items() if k != "_batch"}
        st["batch_count"] = st["batch_count"] + 1
        out.update(dv_steps=dv_steps, di_steps=di_steps, g_steps=g_steps, lr=self._lr(st))
        return st, out


# ---------------------------------------------------------------- the run
def load_patches(path):
    """(vis uint8/float, ir float32) arrays of a ddcgan-prepare patch set, vis scaled to [0, 1]."""
    with h5py.File(path, "r") as f:
        vis, ir = f["vis"][()], f["ir"][()].astype(np.float32)
        vmax = f["vis"].attrs.get("max_value", 255 if vis.dtype == np.uint8 else 1.0)
    return vis, ir, float(vmax)


def train(args):
    """Runs batches until batch_count reaches --steps (or --max_seconds pass); -> exit status.

    Starts from the newest ckpt-*.h5 of --model_dir when there is one (resume: its own
    configuration), else from --init's whole state (weights, optimizer slots, counters) with the
    preset and overrides given here. Checkpoints are named by batch_count, as ddcgan-train's.
    SIGTERM or Ctrl-C finishes the batch, saves the full state there and returns 128 + the
    signal (`ddcgan_tf.signals`); a second signal kills at once.
    """
    import jax
    import jax.numpy as jnp
    os.makedirs(args.model_dir, exist_ok=True)
    resume = latest_checkpoint(args.model_dir)
    template, attrs = read_state(resume or args.init)
    if resume:
        cfg = C.TrainConfig(**json.loads(attrs["train_config"]))
    else:
        names = {f.name for f in dataclasses.fields(C.TrainConfig)} - {"preset"}
        overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
        preset = args.preset or json.loads(attrs["train_config"]).get("preset", "official")
        cfg = C.get_preset(preset, C.SCALE, **overrides)
    model_config = json.loads(attrs["model_config"])
    vis_all, ir_all, vmax = load_patches(args.data)
    if vis_all.shape[1] != model_config["patch_size"]:
        sys.exit(f"{args.data}: patches are {vis_all.shape[1]}x{vis_all.shape[1]}, the model in "
                 f"{resume or args.init} was built for {model_config['patch_size']}")
    n = len(vis_all)
    spe = n // args.batch_size
    state = unpack(template)
    step = int(state["batch_count"])
    new_attrs = {"model_config": attrs["model_config"], "train_config": cfg.to_json(),
                 "steps_per_epoch": spe}
    record = read_record(args.model_dir)  # this run's, or the ddcgan-train run it goes on with
    record_path = os.path.join(args.model_dir, RECORD_FILE)
    if resume and args.seed is None and not record and os.path.exists(record_path):
        sys.exit(f"{record_path}: unreadable, so the run's data seed is unknown; pass --seed (the one "
                 f"it was started with) to resume with its batches")
    # the data seed: given, else the run's recorded one, else 0 (this script's old default)
    seed = check_seed(args.seed if args.seed is not None else record.get("seed", 0))
    device = jax.devices()[0]
    here = {"trainer": JAX_TRAINER, "device": cpu_name() if device.platform == "cpu" else device.device_kind,
            "strategy": "jax", "replicas": 1, "mixed_precision": "float32", "seed": seed}
    # batches step + 1.. run here: a segment, so a resume by either trainer keeps the history
    segments = add_segment(record, step + 1, **here)
    if not record:
        record = {"batch_size": args.batch_size, "data": os.path.abspath(args.data),
                  "init_from": None, "started_from": os.path.abspath(resume or args.init),
                  "model": model_config, "patches": n, "steps_per_epoch": spe, "train": cfg.to_dict()}
    write_record(args.model_dir, {**record, **here, "seed": seed, "segments": segments})
    trainer = Trainer(cfg, spe, official_decoder=model_config.get("official_decoder", True))
    vis_dev, ir_dev, scale_v = jnp.asarray(vis_all), jnp.asarray(ir_all), jnp.float32(vmax)

    @jax.jit
    def take(vis_dev, ir_dev, idx):
        return vis_dev[idx].astype(jnp.float32) / scale_v, ir_dev[idx]

    log_path = os.path.join(args.model_dir, "steps.jsonl")
    t0 = time.time()
    batches = batch_stream(n, args.batch_size, seed, start=step)
    print(f"{n} patches, {spe} batches per epoch; from {resume or args.init} at batch {step}; "
          f"{jax.devices()[0]}; {cfg.to_json()}", flush=True)
    stop = StopRequest().install()  # SIGTERM / Ctrl-C: finish the batch, save, exit 128 + signal
    deadline = t0 + args.max_seconds if args.max_seconds else None
    first, pending, t_prev = step, [], t0
    try:
        while step < args.steps:
            vis, ir = take(vis_dev, ir_dev, jnp.asarray(next(batches)))
            state, out = trainer.step(state, vis, ir)
            step += 1
            pending.append((step, out))
            last = (step >= args.steps or (deadline is not None and time.time() > deadline)
                    or stop.received is not None)
            save = step % args.checkpoint_every == 0 or last
            if len(pending) >= args.log_every or save:
                rows = jax.device_get(pending)  # the only host sync: every log_every batches
                now = time.time()
                with open(log_path, "a") as f:  # batch times spread evenly since the last fetch
                    for k, (s, o) in enumerate(rows, 1):
                        t = t_prev + k * (now - t_prev) / len(rows)
                        f.write(json.dumps({"step": s, "time": round(t, 3), **{key: float(v) for key, v in o.items()}}) + "\n")
                t_prev = now
                pending = []
                s, o = rows[-1]
                print(f"batch {s} g {o['g_loss']:.3f} dv {o['dv_loss']:.3f} di {o['di_loss']:.3f} "
                      f"steps {o['dv_steps']:.0f}/{o['di_steps']:.0f}/{o['g_steps']:.0f} "
                      f"{(now - t0) / (s - first):.3f} s/batch", flush=True)
                if not all(np.isfinite(float(o["g_loss"])) for _, o in rows):
                    print("non-finite loss: stopped; the last checkpoint is kept", flush=True)
                    return 3
            if save:
                path = os.path.join(args.model_dir, f"ckpt-{step:08d}.h5")
                write_state(path, pack(state, template), new_attrs)
            if last:
                if stop.received is not None and step < args.steps:
                    print(stop.message(step, path), file=sys.stderr, flush=True)
                    return 128 + stop.received
                break
    finally:
        stop.restore()
    return 0


def write_init(path, seed, preset, patch_size):
    """A fresh, untrained TF state (TensorFlow needed): what a from-scratch GPU run starts from."""
    import keras
    from ddcgan_tf import checkpoint, train as T
    keras.utils.set_random_seed(seed)
    model = T.build_model(patch_size=patch_size, train_config=C.get_preset(preset))
    checkpoint.save_state(model, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="HDF5 patch set (ddcgan-prepare)")
    ap.add_argument("--init", help="TF state to start from (ckpt-*.h5 or train_state.h5); not needed "
                                   "to resume a --model_dir that holds a checkpoint")
    ap.add_argument("--model_dir")
    ap.add_argument("--steps", type=int, default=1000, help="batch number to stop at")
    ap.add_argument("--max_seconds", type=float, help="stop (with a checkpoint) after this long")
    ap.add_argument("--batch_size", type=int, default=C.BATCH_SIZE)
    ap.add_argument("--checkpoint_every", type=int, default=500)
    ap.add_argument("--log_every", type=int, default=100)
    ap.add_argument("--seed", type=int, help="data seed (default: the run's recorded one, else 0); "
                                            "--write_init: the initial weights' seed (default 0)")
    ap.add_argument("--preset", choices=C.PRESETS)
    parse = {int: int, float: float, float | None: float, str: str,
             bool: lambda v: {"true": True, "false": False}[v.lower()]}
    for f in dataclasses.fields(C.TrainConfig):  # every TrainConfig field overrides the preset
        if f.name != "preset":
            ap.add_argument(f"--{f.name}", type=parse[f.type], help=f"TrainConfig.{f.name}")
    ap.add_argument("--patch_size", type=int, default=C.PATCH_SIZE, help="of --write_init's model")
    ap.add_argument("--write_init", metavar="PATH", help="write a fresh TF state (needs TensorFlow) and exit")
    args = ap.parse_args(argv)
    if args.write_init:
        seed = 0 if args.seed is None else args.seed
        return write_init(args.write_init, seed, args.preset or "official", args.patch_size)
    if not (args.data and args.model_dir):
        ap.error("--data and --model_dir are required")
    if not (args.init or latest_checkpoint(args.model_dir)):
        ap.error(f"--init is required: {args.model_dir} holds no ckpt-*.h5 to resume from")
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
