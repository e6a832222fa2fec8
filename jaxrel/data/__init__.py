"""Readers, splits, per-species energy shifts and ground-truth generators."""

from jaxrel.data.dataset import Dataset, Split, fit_species_energies, split_frames
from jaxrel.data.readers import Frames, read_frames, read_molecules
from jaxrel.data.xtb import XtbData, generate_xtb, save_xtb

__all__ = ["Dataset", "Frames", "Split", "XtbData", "fit_species_energies", "generate_xtb",
           "read_frames", "read_molecules", "save_xtb", "split_frames"]
