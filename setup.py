"""ddcgan_tf: DDcGAN (Ma et al., IEEE TIP 2020) in TensorFlow 2 / Keras 3."""
import os
import platform

from setuptools import find_packages, setup

# The TensorFlow distribution: tensorflow-cpu on Linux x86-64 (a quarter of the download, no
# CUDA), tensorflow elsewhere. GPU users: DDCGAN_TF_REQUIREMENT="tensorflow[and-cuda]" pip install -e .
_cpu = platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")
tf = os.environ.get("DDCGAN_TF_REQUIREMENT", "tensorflow-cpu>=2.16" if _cpu else "tensorflow>=2.16")

setup(
    name="ddcgan_tf",
    version="0.1.0",
    description="DDcGAN multi-resolution image fusion (TIP 2020) in TensorFlow 2 / Keras 3",
    # The shipped generators and manifests (what fusing needs; not the training states) travel in
    # the package as ddcgan_tf/checkpoints/<mode>/, so a non-editable install fuses with no
    # --checkpoint too (shipped.CHECKPOINT_ROOT looks there when no checkpoints/ sits beside it).
    packages=find_packages(include=["ddcgan_tf", "ddcgan_tf.*"]) + ["ddcgan_tf.checkpoints"],
    package_dir={"ddcgan_tf.checkpoints": "checkpoints"},
    package_data={"ddcgan_tf.checkpoints": ["*/generator.h5", "*/manifest.json"]},
    python_requires=">=3.10",
    # tensorboard: tf.summary (TensorBoard scalars and sample images) needs it; TF 2.21 no longer
    # pulls it in.
    install_requires=[tf, "keras>=3.0", "numpy", "h5py", "scipy", "imageio", "absl-py", "tensorboard"],
    extras_require={
        "test": ["pytest", "scikit-image", "hypothesis", "nbclient", "nbformat", "ipykernel",
                 "jax",  # tests/test_jax_parity.py: the GPU trainer against train_step
                 "pytest-xdist",  # -n 2: the suite in 9 minutes instead of 14 on 2 cores
                 "pytest-timeout"],  # pytest.ini: a test that hangs fails with every thread's stack
    },
    entry_points={"console_scripts": [
        "ddcgan-prepare=ddcgan_tf.cli.prepare:run",
        "ddcgan-train=ddcgan_tf.cli.train:run",
        "ddcgan-fuse=ddcgan_tf.cli.fuse:run",
        "ddcgan-evaluate=ddcgan_tf.cli.evaluate:run",
        "ddcgan-export=ddcgan_tf.cli.export:run",
    ]},
)
