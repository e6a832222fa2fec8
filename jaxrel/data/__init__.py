"""Readers, splits, per-species energy shifts and ground-truth generators."""

from jaxrel.data.dataset import Dataset, Split, fit_species_energies, split_frames
from jaxrel.data.readers import Frames, read_frames

__all__ = ["Dataset", "Frames", "Split", "fit_species_energies", "read_frames", "split_frames"]
