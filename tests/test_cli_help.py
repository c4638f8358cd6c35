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


@pytest.mark.parametrize("script,module,flag", COMMANDS)
def test_flag_mistakes_are_one_line_and_exit_2(script, module, flag):
    """A word that is not a flag (`--exclude Balls Farm` for `--exclude Balls,Farm` had built a
    training set holding Farm, exit 0), an unknown flag and a bad flag value: one line on stderr
    naming it, exit status 2 (absl's own: two lines, exit 1), before TensorFlow is imported."""
    code = f"import sys; sys.argv[0] = {script!r}; from ddcgan_tf.cli.{module} import run; sys.exit(run())"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    required = {"prepare": ["--vis_dir", "v", "--ir_dir", "i", "--output", "o.h5"],
                "train": ["--data", "d.h5", "--model_dir", "m"]}.get(module, [])
    value = "512" if flag == "--tile" else "x"
    cases = [([*required, flag, value, "Farm"], "Farm: unexpected argument"),
             ([*required, flag, value, "a", "b"], "a b: unexpected arguments"),
             (["--no_such_flag", "1"], "flags: Unknown command line flag 'no_such_flag'"),
             (["--verbose=loud"] if module == "train" else ["--jit_compile=maybe"] if module == "fuse"
              else [], "flags: flag --")]
    for args, message in cases:
        if not args:
            continue
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                             env=env, timeout=300)
        assert out.returncode == 2, (args, out.returncode, out.stderr[-500:])
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{script}: error: {message}"), (args, out.stderr[-500:])
        assert "tensorflow" not in out.stderr.lower()


def test_pet_mri_flags_in_vis_ir_mode_are_refused(tmp_path):
    """--mri/--pet without --mode pet-mri were ignored (a vis/ir pair fused, exit 0) or met by
    "missing --vis, --ir": refused, naming the mode they need."""
    code = "import sys; sys.argv[0] = 'ddcgan-fuse'; from ddcgan_tf.cli.fuse import run; sys.exit(run())"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    for args in (["--vis", "v.png", "--ir", "i.png", "--output", str(tmp_path / "x.png"), "--mri", "m.png"],
                 ["--mri", "m.png", "--pet", "p.png", "--output", str(tmp_path / "x.png")]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                             env=env, timeout=300)
        assert out.returncode == 2, out.stderr[-500:]
        assert out.stderr.strip().splitlines()[-1].startswith("ddcgan-fuse: error: --mri"), out.stderr[-500:]
        assert "only used with --mode pet-mri" in out.stderr
        assert not os.path.exists(tmp_path / "x.png")
