"""Shared test fixtures (builders and assertions live in ``helpers.py``)."""

import gc
import os
from pathlib import Path

import jax
import pytest

# Exactness tests run in float64 (models are created with dtype="float64" explicitly); set
# before jaxrel is imported.
jax.config.update("jax_enable_x64", True)

from helpers import morse_dimers, small_potential  # noqa: E402
from jaxrel.checkpoint import save_checkpoint  # noqa: E402

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

MAX_MEMORY_MAPS = 30_000
"""Compiled XLA executables stay alive in JAX's caches, each with ~14 memory mappings; a
process that reaches the kernel's vm.max_map_count (65,530 by default) crashes inside the
compiler (a segfault, seen at 90 % of the suite). Above this many mappings the caches are
cleared after a test (the suite peaked at 50k mappings with clearing between modules only)."""


@pytest.fixture(autouse=True)
def bounded_compilation_caches():
    """Clear JAX's compilation caches after a test when the process holds many mappings."""
    yield
    maps = Path(f"/proc/{os.getpid()}/maps")
    if maps.is_file():
        with maps.open() as f:
            if sum(1 for _ in f) > MAX_MEMORY_MAPS:
                jax.clear_caches()
                gc.collect()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of the jaxrel shared data: $JAXREL_DATA, else <repo root>/../shared/data.

    Skips the test when the folder is absent.
    """
    path = Path(os.environ.get("JAXREL_DATA", DEFAULT_DATA_DIR))
    if not path.is_dir():
        pytest.skip(f"rMD17 etc. not found at {path}; set JAXREL_DATA to the folder holding "
                    "the jaxrel shared data (rmd17/, water_dft/, cg_water/)")
    return path


@pytest.fixture(scope="session")
def dimers(tmp_path_factory) -> Path:
    """40 Morse O–H–H frames with energies and forces (extxyz), shared by the session."""
    return morse_dimers(tmp_path_factory.mktemp("data") / "morse.extxyz")


@pytest.fixture(scope="session")
def model_and_data(tmp_path_factory) -> tuple[Path, Path]:
    """A saved float64 one-interaction PaiNN for H/O and a 4-frame Morse-dimer file."""
    root = tmp_path_factory.mktemp("explain")
    data = morse_dimers(root / "morse.extxyz", n_frames=4)
    pot, params = small_potential("float64", model="painn")
    save_checkpoint(root / "model", pot, params)
    return root / "model", data
