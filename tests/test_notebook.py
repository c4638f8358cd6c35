"""notebooks/explore.ipynb runs top to bottom (so it never rots)."""
import os
import re

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_explore_notebook_executes():
    path = os.path.join(REPO, "notebooks", "explore.ipynb")
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it without outputs"
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "fused" in text and "weights:" in text
    # the colour cell: its output's luminance is the grey image ddcgan-fuse would write (as
    # floats against 8 bits: half a grey level), i.e. colour does not change what is fused
    diff = float(re.search(r"largest difference: ([0-9.e-]+)", text).group(1))
    assert diff <= 0.51 / 255, diff
