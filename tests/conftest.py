"""Shared test fixtures (builders and assertions live in ``helpers.py``)."""

import gc
import os
from pathlib import Path

import jax
import pytest

# Exactness tests run in float64 (models are created with dtype="float64" explicitly); set
# before jaxrel is imported.
jax.config.update("jax_enable_x64", True)
# The suite's models are tiny, so its time is XLA compilation: compile with fewer optimisations
# (test_models.py: 150 s → 123 s). Results are the same computations; tolerances are unchanged.
jax.config.update("jax_disable_most_optimizations", True)

from helpers import morse_dimers, small_potential  # noqa: E402
from jaxrel.checkpoint import save_checkpoint  # noqa: E402

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

MODULE_MEMORY_MAPS, TEST_MEMORY_MAPS = 20_000, 55_000
"""Compiled XLA executables stay alive in JAX's caches, each with ~14 memory mappings; a
process that reaches the kernel's vm.max_map_count (65,530 by default) crashes inside the
compiler (a segfault, seen at 90 % of the suite). JAX's caches are cleared after a module
above the first count (the suite then peaked at 50k mappings in 13.8 min) and after any test
above the second (clearing after every test above 30k cost 1.5 min of recompilation)."""


def _memory_maps() -> int:
    maps = Path(f"/proc/{os.getpid()}/maps")
    if not maps.is_file():
        return 0
    with maps.open() as f:
        return sum(1 for _ in f)


def _clear_compilation_caches_above(limit: int) -> None:
    if _memory_maps() > limit:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="module", autouse=True)
def bounded_caches_per_module():
    """Clear JAX's compilation caches after a module when the process holds many mappings."""
    yield
    _clear_compilation_caches_above(MODULE_MEMORY_MAPS)


@pytest.fixture(autouse=True)
def bounded_caches_per_test():
    """The same after a test, near the kernel's limit."""
    yield
    _clear_compilation_caches_above(TEST_MEMORY_MAPS)


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
