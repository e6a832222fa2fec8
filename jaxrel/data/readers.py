"""Read frames of one system (fixed atoms) from the data formats jaxrel uses.

Every reader returns a :class:`Frames` in jaxrel's internal units (Å, eV, eV/Å).
:func:`read_frames` picks the reader from the file's contents:

=============  ===========================================  ==============================
format         ``.npz`` keys it recognises                  conversion
=============  ===========================================  ==============================
``rmd17``      ``nuclear_charges``, ``coords``,             kcal/mol → eV; ``old_*`` keys
               ``energies``, ``forces``                     (original MD17) never read
``water_dft``  ``atomic_numbers``, ``cells``, ``coords``,   none (already eV)
               ``energies``, ``forces``
``cg``         ``types``, ``coords``, ``box`` (3,) or       forces kcal/mol/Å → eV/Å;
               ``cell`` (3, 3), optional ``forces``         species = types + 1; no energies
``noble_gas``  ``species``, ``coords``, ``energies``,       none (written by
               ``forces``, ``cell`` (other keys ignored)    ``jaxrel.data.noble_gas``)
=============  ===========================================  ==============================

Any other file goes to ``ase.io.read(path, index=":")`` (extxyz, xyz, traj, ...).

Coarse-grained bead types start at 0, but species 0 marks padded atoms in
:mod:`jaxrel.graph`, so beads get the positive species id ``type + 1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from jaxrel.graph import check_positions

# 1 kcal/mol in eV: 4184 J / (N_A · e) with the exact SI values of N_A and e
# (CODATA 2018); equals ase.units.create_units("2018")["kcal"] / ["mol"].
KCAL_PER_MOL_IN_EV = 4184.0 / (6.02214076e23 * 1.602176634e-19)

NPZ_FORMATS = {
    "rmd17": "nuclear_charges, coords, energies, forces",
    "water_dft": "atomic_numbers, cells, coords, energies, forces",
    "cg": "types, coords, box or cell, forces (optional)",
    "noble_gas": "species, coords, energies, forces, cell",
}


@dataclass(frozen=True, eq=False)
class Frames:
    """Frames of one system: the same atoms, in the same order, in every frame.

    Fields::

        species    (n_atoms,)               int32   | atomic number Z (CG beads: type + 1)
        positions  (n_frames, n_atoms, 3)   float64 | Å
        energies   (n_frames,) float64 or None      | eV; None when the data has none
        forces     (n_frames, n_atoms, 3) float64 or None | eV/Å
        cell       (3, 3) or (n_frames, 3, 3) float64 or None | Å, rows are cell vectors;
                                                    None = free space
        source     str                              | path and format, for messages

    Arrays are converted to these dtypes on construction.

    Raises:
        ValueError: when the shapes of positions, species, energies, forces or cell
            disagree, or a position is not finite (the message names frame and atom).
    """

    species: np.ndarray
    positions: np.ndarray
    energies: np.ndarray | None
    forces: np.ndarray | None
    cell: np.ndarray | None
    source: str

    def __post_init__(self):
        def set_(name, value, dtype):
            object.__setattr__(self, name, None if value is None else np.asarray(value, dtype))

        set_("species", self.species, np.int32)
        for name in ("positions", "energies", "forces", "cell"):
            set_(name, getattr(self, name), np.float64)
        pos = self.positions
        if pos.ndim != 3 or pos.shape[-1] != 3:
            raise ValueError(f"{self.source}: positions have shape {pos.shape}; "
                             "give them as (n_frames, n_atoms, 3)")
        n_frames, n_atoms = pos.shape[:2]
        expected = {"species": (n_atoms,), "energies": (n_frames,), "forces": pos.shape}
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"{self.source}: {name} have shape {value.shape} but positions "
                                 f"{pos.shape} need {shape}; fix the file so they match")
        if self.cell is not None and self.cell.shape not in ((3, 3), (n_frames, 3, 3)):
            raise ValueError(f"{self.source}: cell has shape {self.cell.shape}; give one (3, 3) "
                             f"cell or one per frame, ({n_frames}, 3, 3)")
        try:
            check_positions(pos, min_distance=None)
        except ValueError as err:
            raise ValueError(f"{self.source}: {err}") from None

    def __len__(self) -> int:
        """Number of frames."""
        return self.positions.shape[0]

    def select(self, index) -> "Frames":
        """The frames picked by ``index``: a slice, an int index array or a bool mask.

        Per-frame arrays (positions, energies, forces, a per-frame cell) are indexed;
        species, a shared (3, 3) cell and source are kept. The result always keeps
        the frame axis (an int gives one frame).
        """
        if not isinstance(index, slice):
            index = np.asarray(index)
            index = index.reshape(1) if index.ndim == 0 else index

        def pick(x):
            return None if x is None else x[index]

        per_frame_cell = self.cell is not None and self.cell.ndim == 3
        return replace(self, positions=pick(self.positions), energies=pick(self.energies),
                       forces=pick(self.forces),
                       cell=pick(self.cell) if per_frame_cell else self.cell)


def read_frames(path, format: str | None = None) -> Frames:
    """Read all frames of one system from ``path`` in Å, eV and eV/Å.

    Args:
        path: a ``.npz`` file in one of the layouts of :data:`NPZ_FORMATS` (see the
            module docstring), or any file ``ase.io.read`` understands (extxyz, ...).
        format: None to detect it from the file; ``"rmd17"``, ``"water_dft"``, ``"cg"``
            or ``"noble_gas"`` to force an npz layout; any other string is passed to
            ``ase.io.read`` as its ``format``.

    Returns:
        :class:`Frames`. Energies/forces are None when the file holds none (CG data
        has no energies); ``cell`` is one (3, 3) array when all frames share it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty or holds no frames; an npz matches no known
            layout; shapes disagree; a position is not finite; frames of an ase file
            differ in species or only some carry energies/forces.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; check the path or set JAXREL_DATA "
                                "to the folder holding the data")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes); re-download or re-write the file")
    if format in NPZ_FORMATS or (format is None and path.endswith(".npz")):
        frames = _read_npz(path, format)
    else:
        frames = _read_ase(path, format)
    if len(frames) == 0:
        raise ValueError(f"{path} holds no frames; give a file with at least one frame")
    return frames


def _read_npz(path: str, format: str | None) -> Frames:
    with np.load(path) as data:
        keys = set(data.files)
        format = format or _detect_npz(keys, path)
        source = f"{path} ({format})"

        def get(key):
            if key not in keys:
                raise ValueError(f"{source} lacks the key {key!r} (keys found: "
                                 f"{', '.join(sorted(keys))}); the {format} layout needs "
                                 f"{NPZ_FORMATS[format]}")
            return data[key]

        if format == "rmd17":
            return Frames(species=get("nuclear_charges"), positions=get("coords"),
                          energies=_kcal_to_ev(get("energies")), forces=_kcal_to_ev(get("forces")),
                          cell=None, source=source)
        if format == "water_dft":
            return Frames(species=get("atomic_numbers"), positions=get("coords"),
                          energies=get("energies"), forces=get("forces"),
                          cell=_shared_cell(get("cells")), source=source)
        if format == "cg":
            positions = get("coords")
            forces = _kcal_to_ev(get("forces")) if "forces" in keys else None
            cell = np.diag(get("box")) if "box" in keys else get("cell")
            return Frames(species=get("types") + 1,
                          positions=positions[None] if positions.ndim == 2 else positions,
                          energies=None, forces=forces, cell=cell, source=source)
        return Frames(species=get("species"), positions=get("coords"), energies=get("energies"),
                      forces=get("forces"), cell=get("cell") if "cell" in keys else None,
                      source=source)


def _kcal_to_ev(x: np.ndarray) -> np.ndarray:
    """kcal/mol (or kcal/mol/Å) to eV (eV/Å), computed in float64 whatever the stored dtype."""
    return x.astype(np.float64) * KCAL_PER_MOL_IN_EV


def _detect_npz(keys: set[str], path: str) -> str:
    if "nuclear_charges" in keys:
        return "rmd17"
    if {"atomic_numbers", "cells"} <= keys:
        return "water_dft"
    if "types" in keys and keys & {"box", "cell"}:
        return "cg"
    if {"species", "coords"} <= keys:
        return "noble_gas"
    if not keys:
        raise ValueError(f"{path} holds no frames (an npz without arrays); "
                         "give a file with at least one frame")
    known = "; ".join(f"{name}: {need}" for name, need in NPZ_FORMATS.items())
    raise ValueError(f"{path} has keys {', '.join(sorted(keys))}, which match no known npz "
                     f"layout ({known}); rename the keys or convert the file to extxyz")


def _shared_cell(cells: np.ndarray) -> np.ndarray:
    """One (3, 3) cell when every frame has the same one, else the (n_frames, 3, 3) stack."""
    return cells[0] if len(cells) and np.all(cells == cells[0]) else cells


def _read_ase(path: str, format: str | None) -> Frames:
    import ase.io

    source = f"{path} (ase{'' if format is None else ' ' + format})"
    atoms_list = ase.io.read(path, index=":", format=format)
    if not atoms_list:
        raise ValueError(f"{source} holds no frames; give a file with at least one frame")
    species = atoms_list[0].numbers
    for k, atoms in enumerate(atoms_list):
        if not np.array_equal(atoms.numbers, species):
            raise ValueError(f"{source}: frame {k} has species {atoms.numbers.tolist()} but "
                             f"frame 0 has {species.tolist()}; split the file into one file "
                             "per system")
    cell = None
    if any(atoms.pbc.any() for atoms in atoms_list):
        cell = _shared_cell(np.stack([atoms.cell.array for atoms in atoms_list]))
    return Frames(species=species, positions=np.stack([a.positions for a in atoms_list]),
                  energies=_ase_property(atoms_list, "energy", source),
                  forces=_ase_property(atoms_list, "forces", source), cell=cell, source=source)


def _ase_property(atoms_list, name: str, source: str) -> np.ndarray | None:
    """Stack the calculator results ``name`` of all frames; None when no frame has them."""
    has = [a.calc is not None and name in a.calc.results for a in atoms_list]
    if not any(has):
        return None
    if not all(has):
        raise ValueError(f"{source}: frame {has.index(False)} has no {name} but frame "
                         f"{has.index(True)} has; give {name} for every frame or for none")
    return np.stack([a.calc.results[name] for a in atoms_list])
