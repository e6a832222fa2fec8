"""Train/validation/test splits and per-species energy shifts for a set of frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from jaxrel.data.readers import Frames, read_frames


@dataclass(frozen=True, eq=False)
class Split:
    """Disjoint frame indices, each an (n,) int64 array into the frames."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_frames(n_frames: int, n_train: int, n_validation: int, n_test: int | None = None,
                 seed: int = 0) -> Split:
    """Split ``range(n_frames)`` at random into disjoint train, validation and test indices.

    The split is a fixed function of ``seed`` (``np.random.default_rng(seed).permutation``):
    train takes the first ``n_train`` permuted indices, validation the next
    ``n_validation``, test the next ``n_test`` (None: all remaining frames).

    Raises:
        ValueError: a size is negative or the sizes add up to more than ``n_frames``.
    """
    sizes = {"n_train": n_train, "n_validation": n_validation, "n_test": n_test}
    for name, size in sizes.items():
        if size is not None and size < 0:
            raise ValueError(f"{name} = {size} is negative; give a size of 0 or more")
    if n_test is None:
        n_test = max(n_frames - n_train - n_validation, 0)
    if n_train + n_validation + n_test > n_frames:
        raise ValueError(f"n_train + n_validation + n_test = {n_train} + {n_validation} + {n_test} "
                         f"exceeds the {n_frames} frames available; lower the sizes")
    order = np.random.default_rng(seed).permutation(n_frames)
    ends = np.cumsum([n_train, n_validation, n_test])
    return Split(train=order[:ends[0]], validation=order[ends[0]:ends[1]],
                 test=order[ends[1]:ends[2]])


def fit_species_energies(frames: Frames | Sequence[Frames], indices=None,
                         label: str = "energies") -> dict[int, float]:
    """Per-species energy shifts e_s (eV) with energies ≈ Σ_s count_s · e_s, by least squares.

    Args:
        frames: one :class:`Frames`, or a list of them (one per composition: a
            ``Frames`` holds a single species sequence, so fitting over several
            compositions takes several ``Frames``).
        indices: frames to fit on (e.g. ``split.train``); only with a single ``Frames``.
            None: all frames.
        label: the per-frame label to fit, ``"energies"`` or another (n_frames,) field of
            ``Frames`` such as ``"gaps"`` (a sum readout of the gap, eV).

    Returns:
        ``{atomic number: shift in eV}`` for every species present.

    The fit is ``np.linalg.lstsq(counts, energies, rcond=None)``. When every frame has
    the same composition (one rMD17 molecule) the system is rank deficient and
    lstsq returns the minimum-norm solution ``e_s = count_s · Ē / Σ_t count_t²``
    (Ē: mean energy): the shifts sum to Ē over the molecule, so they remove the mean
    energy exactly, but how Ē is shared among species carries no meaning. For a
    single species this is Ē / n_atoms, the mean energy split evenly per atom.

    Raises:
        ValueError: frames without energies (e.g. coarse-grained data), no frames to
            fit, or ``indices`` given with a list of ``Frames``.
    """
    if isinstance(frames, Frames):
        frames = [frames if indices is None else frames.select(indices)]
    elif indices is not None:
        raise ValueError("indices selects frames of a single Frames; with a list of Frames, "
                         "select the frames of each before calling fit_species_energies")
    for f in frames:
        if getattr(f, label) is None:
            raise ValueError(f"{f.source} has no {label} (coarse-grained force-matching data has no "
                             f"energies); fit species shifts only on frames with {label}")
    if sum(len(f) for f in frames) == 0:
        raise ValueError("no frames to fit species energies on; give at least one frame")
    species = np.unique(np.concatenate([f.species for f in frames]))
    counts = np.concatenate([np.broadcast_to((f.species[:, None] == species).sum(0),
                                             (len(f), len(species))) for f in frames])
    energies = np.concatenate([getattr(f, label) for f in frames])
    shifts = np.linalg.lstsq(counts.astype(np.float64), energies, rcond=None)[0]
    return {int(z): float(e) for z, e in zip(species, shifts)}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Frames of one system with their split and per-species energy shifts.

    ``species_energies`` (eV per atom of each species) is fitted on the training
    frames only; it is empty when the frames have no energies (coarse-grained data).
    """

    frames: Frames
    split: Split
    species_energies: dict[int, float]

    @classmethod
    def from_path(cls, path, n_train: int, n_validation: int, n_test: int | None = None,
                  seed: int = 0) -> "Dataset":
        """Read ``path`` (see :func:`read_frames`), split it and fit the energy shifts.

        Raises:
            FileNotFoundError, ValueError: as :func:`read_frames` and :func:`split_frames`.
        """
        frames = read_frames(path)
        split = split_frames(len(frames), n_train, n_validation, n_test, seed)
        shifts = ({} if frames.energies is None or len(split.train) == 0
                  else fit_species_energies(frames, split.train))
        return cls(frames=frames, split=split, species_energies=shifts)

    def subset(self, name: str) -> Frames:
        """The ``"train"``, ``"validation"`` or ``"test"`` frames.

        Raises:
            ValueError: any other name.
        """
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown subset {name!r}; use 'train', 'validation' or 'test'")
        return self.frames.select(getattr(self.split, name))
