"""benchmarks/validate_tno.py's reporting: which of the bar's numbers each scene beats."""
import os
import sys

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import validate_tno  # noqa: E402


def test_scene_table_counts_the_bar_numbers_each_scene_beats():
    bar = validate_tno.OFFICIAL
    above = {k: 1.1 * v for k, v in bar.items()}
    below = {k: 0.9 * v for k, v in bar.items()}
    mixed = dict(above, SCD=-0.6, EN=0.9 * bar["EN"])  # two short, as on a hard scene
    result = {"per_image": {"easy": above, "hard": mixed, "none": below},
              "mean": {k: (above[k] + mixed[k] + below[k]) / 3 for k in bar}}
    lines = validate_tno.scene_table(result).splitlines()
    assert lines[0].startswith("| scene | EN | SD |") and lines[0].endswith("| beats |")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert list(rows) == ["easy", "hard", "none", "mean"]
    beats = {name: int(line.rstrip(" |").rsplit("| ", 1)[1]) for name, line in rows.items()}
    assert beats == {"easy": len(bar), "hard": len(bar) - 2, "none": 0,
                     "mean": len(validate_tno.wins(result["mean"]))}
    assert "| -0.6 |" in rows["hard"]
