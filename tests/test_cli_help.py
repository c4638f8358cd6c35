"""`ddcgan-X --help` describes the command: its docstring and its own flags, not TensorFlow's."""
import os
import subprocess
import sys

import pytest

from conftest import REPO

# (console script, module, a flag of its own)
COMMANDS = [("ddcgan-prepare", "prepare", "--vis_dir"), ("ddcgan-train", "train", "--init_from"),
            ("ddcgan-fuse", "fuse", "--tile"), ("ddcgan-evaluate", "evaluate", "--fused_dir"),
            ("ddcgan-export", "export", "--output")]


@pytest.mark.parametrize("script,module,flag", COMMANDS)
def test_help_of_the_installed_command_lists_its_flags(script, module, flag):
    # what pip's console-script wrapper does: a __main__ without docstring or flags calls run()
    code = (f"import sys; sys.argv[0] = {script!r}; from ddcgan_tf.cli.{module} import run; "
            f"sys.exit(run())")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True,
                         env=env, timeout=300)
    text = out.stdout + out.stderr
    assert text.startswith(f"{script}:"), text[:300]  # the module's docstring, first line
    assert f"  {flag}:" in text, text[:2000]
    assert "--tt_check_filter" not in text  # TensorFlow's flags stay behind --helpfull
