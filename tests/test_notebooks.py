"""Every tutorial notebook runs top to bottom in its small mode (``SMALL = True``)."""

import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
sys.path.insert(0, str(NOTEBOOK_DIR))
from execute import NOTEBOOKS, execute_notebook  # noqa: E402


def test_every_tutorial_is_found():
    names = [p.stem[:2] for p in NOTEBOOKS]
    assert names == sorted(names) and len(names) >= 4, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_small_mode(path, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXREL_DATA", str(data_dir))
    nb, _ = execute_notebook(path, small=True, out_dir=tmp_path, timeout=300)
    figures = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} drew no figure in small mode"
