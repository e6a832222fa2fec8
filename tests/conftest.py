"""Shared test fixtures."""

import os
from pathlib import Path

import jax
import pytest

# Exactness tests run in float64 (models are created with dtype="float64" explicitly).
jax.config.update("jax_enable_x64", True)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
