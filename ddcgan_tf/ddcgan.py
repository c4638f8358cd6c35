"""DDcGAN: G, Dv and Di trained by the adaptive alternating schedule (paper Algorithm 1).

`DDcGAN.train_step` runs one batch of the schedule entirely in the graph:

  1. one SGD step of Dv, one of Di, one RMSProp step of G on the full loss L_G;
  2. while L_Dv > L_max (and fewer than I_max Dv steps): another Dv step; the same for Di;
  3. while L_Dv < L_min or L_Di < L_min (and fewer than I_max G steps): a G step on the
     adversarial loss alone (official `G_GAN_solver`, an RMSProp of its own);
  4. while L_G > L_Gmax (and fewer than I_max G steps in all): a G step on L_G.

With `alternate_batches` (the official preset; official train.py `if batch % 2 == 0:`, batch
being the index within the epoch) a batch of even index runs only the D parts (the Dv and Di
steps of 1, then 2) and a batch of odd index only the G parts (the G step of 1, then 3 and 4),
chosen in the graph (`tf.cond` on the batch counter). Without it (the paper preset) every batch
runs all four.

Every loss that decides a repeat is recomputed after the step before it, as the official
`sess.run` calls do; the D steps of one phase share one generator output (G does not change
during them), and phase 2 takes it from the forward pass that evaluated the losses after
step 1, so a batch of all four costs three G forward passes and one backward pass when nothing
repeats (alternating: a D batch one forward pass, a G batch two and a backward pass). The step
returns g_loss, g_adv, ir_loss, grad_loss, dv_loss, di_loss, the mean D scores (dv_real,
dv_fake, di_real, di_fake), dv_steps, di_steps, g_steps and lr (the rate after the batch,
which the next optimizer step takes, as Keras's schedules report it). The repeats
are `tf.while_loop`s, so with `fit` there is no Python-side sync per step. Every optimizer
step reads the learning rate
lr0 * rate ** (count / steps_per_epoch), where `count` is the number of optimizer steps so
far (official: every `minimize` increments the shared `global_step`) or of batches (paper).
"""
import keras
import tensorflow as tf

from ddcgan_tf import config as C
from ddcgan_tf import losses
from ddcgan_tf.discriminator import Discriminator
from ddcgan_tf.generator import Generator
from ddcgan_tf.optimizers import TF1RMSprop, decayed_learning_rate

SCHEDULE_KEYS = ("l_max", "l_min", "g_max", "max_repeats")


@keras.saving.register_keras_serializable(package="ddcgan_tf")
class DDcGAN(keras.Model):
    """The three networks and the training schedule. Call it to fuse: `model((vis, ir))`."""

    def __init__(self, scale=C.SCALE, patch_size=C.PATCH_SIZE, official_decoder=True,
                 bn_mode="batch", **kwargs):
        kwargs.setdefault("name", "ddcgan")
        super().__init__(**kwargs)
        if patch_size % scale:
            raise ValueError(f"patch_size {patch_size} is not a multiple of scale {scale}")
        self.scale, self.patch_size = scale, patch_size
        self.generator = Generator(scale=scale, official_decoder=official_decoder, bn_mode=bn_mode)
        self.dv = Discriminator(patch_size, name="dv")
        self.di = Discriminator(patch_size // scale, name="di")
        # Counters of the schedule, saved with the weights (resume restores the LR schedule).
        self.batch_count = self.add_weight(shape=(), dtype="int64", initializer="zeros",
                                           trainable=False, name="batch_count")
        self.optimizer_steps = self.add_weight(shape=(), dtype="int64", initializer="zeros",
                                               trainable=False, name="optimizer_steps")
        self.train_config = None
        self.piecewise_jit, self._jit_pieces = False, {}  # compile(jit_compile=True) sets them

    def build(self, input_shape=None):
        for net in (self.generator, self.dv, self.di):
            net.build()
        self.built = True

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    def get_config(self):
        return {"name": self.name, "scale": self.scale, "patch_size": self.patch_size,
                "official_decoder": self.generator.official_decoder,
                "bn_mode": self.generator.bn_mode}

    # ------------------------------------------------------------------ compile
    def compile(self, g_optimizer=None, dv_optimizer=None, di_optimizer=None,
                g_adv_optimizer=None, train_config=None, steps_per_epoch=1000, **kwargs):
        """Optimizers default to the preset's: RMSProp (TF1 semantics) for G, SGD for Dv, Di.

        g_adv_optimizer is the separate RMSProp of the adversarial-only G steps (the official
        code builds two RMSPropOptimizers, each with its own accumulators); None clones
        g_optimizer. steps_per_epoch (batches per epoch) sets the decay period and, with
        alternate_batches, which batches are D batches (even index within the epoch): give it
        the batches per epoch that `fit` runs.
        """
        # XLA compiles the schedule's pieces, not the whole step (see _compiled): a G step
        # inside an XLA while loop runs its convolution gradients as naive loops on the CPU.
        jit = kwargs.pop("jit_compile", False)
        super().compile(jit_compile=False, **kwargs)
        self.piecewise_jit = jit is True
        self._jit_pieces = {}
        cfg = train_config or C.get_preset("official", self.scale)
        self.train_config = cfg
        self.steps_per_epoch = int(max(1, steps_per_epoch))
        lr = cfg.learning_rate

        def rmsprop():
            return TF1RMSprop(learning_rate=lr, initial_accumulator_value=cfg.rmsprop_initial_accumulator)

        self.g_optimizer = g_optimizer or rmsprop()
        self.g_adv_optimizer = g_adv_optimizer or (
            self.g_optimizer.__class__.from_config(self.g_optimizer.get_config()))
        self.dv_optimizer = dv_optimizer or keras.optimizers.SGD(learning_rate=lr)
        self.di_optimizer = di_optimizer or keras.optimizers.SGD(learning_rate=lr)
        if keras.mixed_precision.dtype_policy().name == "mixed_float16":
            # float16 gradients underflow without loss scaling (bfloat16 needs none)
            for name in ("g_optimizer", "g_adv_optimizer", "dv_optimizer", "di_optimizer"):
                opt = getattr(self, name)
                if not isinstance(opt, keras.optimizers.LossScaleOptimizer):
                    setattr(self, name, keras.optimizers.LossScaleOptimizer(opt))
        if not self.built:
            self.build()
        # The thresholds live in variables: changing them (set_schedule) needs no retracing.
        self.schedule = {k: tf.Variable(float(getattr(cfg, k)), trainable=False, name=k)
                         for k in SCHEDULE_KEYS}
        # Build every optimizer now: variables must not be created inside the traced step.
        self.g_optimizer.build(self.generator.trainable_variables)
        self.g_adv_optimizer.build(self.generator.trainable_variables)
        self.dv_optimizer.build(self.dv.trainable_variables)
        self.di_optimizer.build(self.di.trainable_variables)

    def set_schedule(self, **values):
        """Changes L_max, L_min, L_Gmax or I_max of a compiled model (train_config follows)."""
        for k, v in values.items():
            if k not in SCHEDULE_KEYS:
                raise ValueError(f"unknown schedule value {k!r}; known: {SCHEDULE_KEYS}")
            self.schedule[k].assign(float(v))
            setattr(self.train_config, k, type(getattr(self.train_config, k))(v))

    @property
    def optimizers(self):
        return {"g": self.g_optimizer, "g_adv": self.g_adv_optimizer,
                "dv": self.dv_optimizer, "di": self.di_optimizer}

    @property
    def metrics(self):
        return []

    # ------------------------------------------------------------------ pieces
    def learning_rate(self):
        cfg = self.train_config
        count = self.optimizer_steps if cfg.decay_counts == "optimizer_steps" else self.batch_count
        return decayed_learning_rate(cfg.learning_rate, cfg.lr_decay_rate, count, self.steps_per_epoch)

    # Every piece below is written for the cross-replica context: `_replicas` runs a function on
    # each replica's share of the batch (directly, without a distribution strategy) and `_mean`
    # averages its results, so the schedule decides the same thing on every replica.
    def _replicas(self, fn, *args):
        strategy = self.distribute_strategy
        return fn(*args) if strategy.num_replicas_in_sync == 1 else strategy.run(fn, args=args)

    def _mean(self, values):
        strategy = self.distribute_strategy
        if strategy.num_replicas_in_sync == 1:
            return values
        return tf.nest.map_structure(
            lambda t: strategy.reduce(tf.distribute.ReduceOp.MEAN, t, axis=None), values)

    def _compiled(self, key, fn):
        """fn, XLA-compiled (one cached tf.function per key) when compiled with jit_compile=True.

        The loops stay in the TensorFlow graph and call compiled pieces: the first steps (1.
        below) and each loop's body. Measured on a 2-core CPU (84x84, batch 4): compiling the
        whole step made a batch with one G repeat take 154 s against 3.2 s without XLA (XLA's
        CPU backend lowers the G convolution gradients inside a while loop to naive loops);
        with the pieces it takes 3.4-3.6 s, and a batch without repeats is as fast as with the
        whole step compiled (1.73 vs 1.72 s). Under a multi-replica strategy the
        pieces call strategy.run, which cannot be compiled: nothing is compiled there.
        """
        if not self.piecewise_jit or self.distribute_strategy.num_replicas_in_sync > 1:
            return fn
        if key not in self._jit_pieces:
            self._jit_pieces[key] = tf.function(fn, jit_compile=True, autograph=False)
        return self._jit_pieces[key]

    def _update(self, optimizer, variables, loss_fn, *args):
        """One optimizer step on loss_fn(*args) over `variables`, then the official weight clipping.

        Each replica's gradient is of its loss / replicas; the optimizer sums them, giving the
        gradient of the global-batch loss. Returns the (pre-update) loss, averaged.
        """
        replicas = self.distribute_strategy.num_replicas_in_sync
        optimizer.learning_rate = self.learning_rate()

        def step(*a):
            with tf.GradientTape() as tape:
                loss = loss_fn(*a)
                scaled = optimizer.scale_loss(loss / replicas)  # loss scaling under mixed_float16
            grads = tape.gradient(scaled, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return loss

        loss = self._mean(self._replicas(step, *args))
        clip = self.train_config.clip_value
        if clip is not None:
            for v in variables:
                v.assign(tf.clip_by_value(v, -clip, clip))
        self.optimizer_steps.assign_add(1)
        return loss

    def _generate(self, vis, ir):
        return self.generator((vis, ir), training=True,
                              update_bn=self.train_config.update_bn_statistics)

    def _fakes(self, vis, ir):
        fused = tf.stop_gradient(self._generate(vis, ir))
        return fused, losses.downsample(fused, self.scale)

    def _d_loss(self, disc, real, fake):
        return losses.discriminator_loss(disc(real, training=True), disc(fake, training=True))

    def _dv_loss(self, vis, fake, fake_lr):
        return self._d_loss(self.dv, vis, fake)

    def _di_loss(self, ir, fake, fake_lr):
        return self._d_loss(self.di, ir, fake_lr)

    def _g_losses(self, vis, ir):
        """Forward pass of everything: every loss and the mean discriminator scores."""
        return self._g_forward(vis, ir)[0]

    def _g_forward(self, vis, ir):
        """(_g_losses, the generator's output and its psi, gradient-free) from one G forward pass."""
        fused = self._generate(vis, ir)
        fused_lr = losses.downsample(fused, self.scale)
        return (self._output_losses(vis, ir, fused, fused_lr),
                (tf.stop_gradient(fused), tf.stop_gradient(fused_lr)))

    def _output_losses(self, vis, ir, fused, fused_lr):
        """Every loss and the mean discriminator scores of a generator output (official `sess.run(
        [G_loss, D1_loss, D2_loss])`)."""
        cfg = self.train_config
        dv_fake, di_fake = self.dv(fused, training=True), self.di(fused_lr, training=True)
        dv_real, di_real = self.dv(vis, training=True), self.di(ir, training=True)
        g_adv = losses.generator_adversarial(dv_fake, di_fake)
        ir_term, grad_term = losses.content_terms(fused, vis, ir, self.scale)
        g_loss = losses.generator_loss(g_adv, ir_term, grad_term, cfg.content_weight,
                                       cfg.grad_weight, cfg.ir_weight)
        return {"g_loss": g_loss, "g_adv": g_adv, "ir_loss": ir_term, "grad_loss": grad_term,
                "dv_loss": losses.discriminator_loss(dv_real, dv_fake),
                "di_loss": losses.discriminator_loss(di_real, di_fake),
                "dv_real": tf.reduce_mean(dv_real), "dv_fake": tf.reduce_mean(dv_fake),
                "di_real": tf.reduce_mean(di_real), "di_fake": tf.reduce_mean(di_fake)}

    def _repeat_d(self, disc, optimizer, loss_fn, data, loss, steps):
        """Step 2 for one discriminator: repeat while its loss > L_max, up to I_max steps."""
        sched = self.schedule

        def step(*data):
            self._update(optimizer, disc.trainable_variables, loss_fn, *data)
            return self._mean(self._replicas(loss_fn, *data))

        step = self._compiled("repeat_" + disc.name, step)
        return tf.while_loop(
            lambda loss, steps: tf.logical_and(loss > sched["l_max"], steps < sched["max_repeats"]),
            lambda loss, steps: (step(*data), steps + 1), (loss, steps))

    def _repeat_g(self, optimizer, loss_key, vis, ir, out, steps, keep_going):
        """Steps 3-4: G steps on out[loss_key] while keep_going(out), up to I_max G steps in all."""
        def step(vis, ir):
            self._update(optimizer, self.generator.trainable_variables,
                         lambda v, i: self._g_losses(v, i)[loss_key], vis, ir)
            return self._mean(self._replicas(self._g_losses, vis, ir))

        step = self._compiled("repeat_" + loss_key, step)
        return tf.while_loop(
            lambda out, steps: tf.logical_and(keep_going(out), steps < self.schedule["max_repeats"]),
            lambda out, steps: (step(vis, ir), steps + 1), (out, steps))

    # ------------------------------------------------------------------ the step
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skips Keras's build-from-a-sample-batch when compile() has built every variable.

        Keras (3.x TF trainer) averages a sample batch with an eager `strategy.reduce` to build
        the model symbolically; under MultiWorkerMirroredStrategy that eager reduce of a
        PerReplica batch fails ("Attempt to convert a value (PerReplica ...) to a Tensor").
        There is nothing left to build here, so nothing is reduced.
        """
        if all(layer.built for layer in self._flatten_layers()) and self.train_config is not None:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def make_train_function(self, force=False):
        """Under a multi-replica strategy, runs `train_step` in the cross-replica context.

        Keras would call train_step on every replica (strategy.run); the schedule's loops hold
        synchronisation points (optimizer updates), which cannot sit inside a replica's control
        flow, so the loops run cross-replica and each step inside is one strategy.run.
        """
        strategy = self.distribute_strategy
        if strategy.num_replicas_in_sync == 1:
            return super().make_train_function(force)
        if self.train_function is not None and not force:
            return self.train_function
        step = tf.function(self.train_step, reduce_retracing=True, autograph=False)
        self.train_function = lambda iterator: step(iterator.get_next())
        return self.train_function

    def train_step(self, data):
        """One batch of the adaptive schedule; returns the losses and the steps of each net."""
        vis, ir = data[0], data[1]
        one, zero = tf.constant(1.0), tf.constant(0.0)
        if self.train_config.alternate_batches:
            # official: `if batch % 2 == 0` (batch: the index within the epoch) trains Dv and Di
            # (steps 1-2), else G (steps 1, 3-4)
            index = tf.math.floormod(self.batch_count, self.steps_per_epoch)
            d_batch = tf.equal(tf.math.floormod(index, 2), 0)

            def d_batch_fn():
                out, fakes = self._compiled("first_d", self._first_d_steps)(vis, ir)
                return (*self._repeat_ds(vis, ir, out, fakes), zero)

            def g_batch_fn():
                out, _ = self._compiled("first_g", self._first_g_step)(vis, ir)
                out, g_steps = self._repeat_gs(vis, ir, out, one)
                return out, zero, zero, g_steps

            out, dv_steps, di_steps, g_steps = tf.cond(d_batch, d_batch_fn, g_batch_fn)
        else:
            # 1. Dv, Di and G once each (official: D1_solver, D2_solver, G_solver).
            out, fakes = self._compiled("first", self._first_steps)(vis, ir)
            out, dv_steps, di_steps = self._repeat_ds(vis, ir, out, fakes)
            out, g_steps = self._repeat_gs(vis, ir, out, one)
        self.batch_count.assign_add(1)
        out.update(dv_steps=dv_steps, di_steps=di_steps, g_steps=g_steps, lr=self.learning_rate())
        return out

    def _repeat_ds(self, vis, ir, out, fakes):
        """2. Discriminators repeat while they are losing. G is fixed during them, so they all use
        the output of the forward pass that evaluated `out` (no second G pass)."""
        one = tf.constant(1.0)
        out = dict(out)
        out["dv_loss"], dv_steps = self._repeat_d(self.dv, self.dv_optimizer, self._dv_loss,
                                                  (vis, *fakes), out["dv_loss"], one)
        out["di_loss"], di_steps = self._repeat_d(self.di, self.di_optimizer, self._di_loss,
                                                  (ir, *fakes), out["di_loss"], one)
        return out, dv_steps, di_steps

    def _repeat_gs(self, vis, ir, out, g_steps):
        """3. Adversarial G steps while a discriminator is winning too clearly; 4. full G steps
        while L_G is too large. `out`: the losses after the batch's first G step."""
        g_max = self.schedule["g_max"] * (out["g_loss"] if self.train_config.g_max_relative else 1.0)
        out, g_steps = self._repeat_g(
            self.g_adv_optimizer, "g_adv", vis, ir, out, g_steps,
            lambda o: tf.logical_or(o["dv_loss"] < self.schedule["l_min"],
                                    o["di_loss"] < self.schedule["l_min"]))
        return self._repeat_g(self.g_optimizer, "g_loss", vis, ir, out, g_steps,
                              lambda o: o["g_loss"] > g_max)

    def _d_updates(self, vis, ir):
        """One Dv and one Di step on one generator output -> that output (fused, psi(fused))."""
        fakes = self._replicas(self._fakes, vis, ir)
        self._update(self.dv_optimizer, self.dv.trainable_variables, self._dv_loss, vis, *fakes)
        self._update(self.di_optimizer, self.di.trainable_variables, self._di_loss, ir, *fakes)
        return fakes

    def _first_steps(self, vis, ir):
        """Step 1 -> (the losses after it, averaged; the generator output they were taken from)."""
        self._d_updates(vis, ir)
        return self._first_g_step(vis, ir)

    def _first_d_steps(self, vis, ir):
        """Step 1 of a D batch (alternate_batches) -> (the losses after it; the output of G)."""
        fakes = self._d_updates(vis, ir)
        return self._mean(self._replicas(self._output_losses, vis, ir, *fakes)), fakes

    def _first_g_step(self, vis, ir):
        """One G step on L_G -> (the losses after it, averaged; the output they came from)."""
        self._update(self.g_optimizer, self.generator.trainable_variables,
                     lambda v, i: self._g_losses(v, i)["g_loss"], vis, ir)
        out, output = self._replicas(self._g_forward, vis, ir)
        return self._mean(out), output

    def test_step(self, data):
        vis, ir = data[0], data[1]
        fused = self.generator((vis, ir), training=False)
        ir_term, grad_term = losses.content_terms(fused, vis, ir, self.scale)
        return {"ir_loss": ir_term, "grad_loss": grad_term}
