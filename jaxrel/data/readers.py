"""Read frames of one system (fixed atoms) from the data formats jaxrel uses.

Every reader returns a :class:`Frames` in jaxrel's internal units (Å, eV, eV/Å).
:func:`read_frames` picks the reader from the file's contents; :func:`read_molecules` reads
a file of several molecules (``xtb``) as one :class:`Frames` per molecule:

=============  ===========================================  ==============================
format         ``.npz`` keys it recognises                  conversion
=============  ===========================================  ==============================
``rmd17``      ``nuclear_charges``, ``coords``,             kcal/mol → eV; ``old_*`` keys
               ``energies``, ``forces``                     (original MD17) never read
``water_dft``  ``atomic_numbers``, ``cells``, ``coords``,   none (already eV)
               ``energies``, ``forces``
``cg``         ``types``, ``coords``, ``box`` (3,) or       forces kcal/mol/Å → eV/Å;
               ``cell`` (3, 3), optional ``forces``         species = types + 1; no energies;
                                                            bead masses from the sidecar
                                                            JSON (below), else None
``noble_gas``  ``species``, ``coords``, ``energies``,       none (written by
               ``forces``, ``cell`` (other keys ignored)    ``jaxrel.data.noble_gas``)
``xtb``        ``xtb_method``, ``molecules``, ``species``   none (written by
               (padded with 0), ``coords``, ``energies``,   ``jaxrel.data.xtb``); one
               ``forces``, ``gaps``, ``charges``,           Frames per molecule, padding
               ``dipoles`` (other keys ignored)             atoms dropped
=============  ===========================================  ==============================

Any other file goes to ``ase.io.read(path, index=":")`` (extxyz, xyz, traj, ...).

Coarse-grained bead types start at 0, but species 0 marks padded atoms in
:mod:`jaxrel.graph`, so beads get the positive species id ``type + 1``. Species may also
be stored as element symbols (``'O'``, ``'H'``), which become atomic numbers.

Bead masses (``Frames.masses``, amu) of ``cg`` files come from the JSON sidecar beside the
npz (same stem, ``.json``), as the shared CG data sets have it (``generate_cg_*.py``):

==========================================  =====================  ===================
sidecar ``"system"`` text names (a word)    molecule of one bead   bead mass (amu)
==========================================  =====================  ===================
``water``                                   H2O                    18.015
``methane``                                 CH4                    16.043
==========================================  =====================  ===================

The mass is the molecule's, summed from ``ase.data.atomic_masses`` (IUPAC standard atomic
weights: H 1.008, C 12.011, O 15.999), for a one-bead-per-molecule map: every bead has the
same type and the sidecar's ``"n_molecules"``, when given, equals the number of beads.
Without a sidecar, with one that is not a JSON object, names no molecule of the table or
more than one, or describes another map, ``masses`` is None: a mass must then be given
(``jaxrel md --mass``), never guessed from the species id.

Every bad input raises ``ValueError`` (``FileNotFoundError`` for a missing path) with one
sentence that names the file, frame, atom or key and the fix; nothing is read as NaN.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
import zlib
from dataclasses import dataclass, replace

import numpy as np

from jaxrel.geometry import check_cell
from jaxrel.graph import check_positions

# 1 kcal/mol in eV: 4184 J / (N_A · e) with the exact SI values of N_A and e
# (CODATA 2018); equals ase.units.create_units("2018")["kcal"] / ["mol"].
KCAL_PER_MOL_IN_EV = 4184.0 / (6.02214076e23 * 1.602176634e-19)

NPZ_FORMATS = {
    "rmd17": "nuclear_charges, coords, energies, forces",
    "water_dft": "atomic_numbers, cells, coords, energies, forces",
    "cg": "types, coords, box or cell, forces (optional)",
    "noble_gas": "species, coords, energies, forces, cell",
    "xtb": "xtb_method, molecules, species, coords, energies, forces, gaps, charges, dipoles",
}

XTB_KEYS = ("molecules", "species", "coords", "energies", "forces", "gaps", "charges", "dipoles")
"""The arrays of an ``xtb`` npz that :func:`read_molecules` reads (F frames, N atoms):
``molecules`` (F,) str, ``species`` (F, N) with 0 for padding, ``coords`` (F, N, 3) Å,
``energies`` (F,) eV, ``forces`` (F, N, 3) eV/Å, ``gaps`` (F,) eV, ``charges`` (F, N) e,
``dipoles`` (F, 3) e·Å."""

SPECIES_KEYS = ("nuclear_charges", "atomic_numbers", "species")
"""npz keys that may hold element symbols instead of atomic numbers."""

TEXT_KEYS = ("molecules",)
"""npz keys that hold text (a numpy ``str_`` array) instead of numbers."""

_NPZ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, pickle.UnpicklingError,
               zlib.error)
"""What ``np.load`` and reading an npz member raise on a truncated, corrupt or foreign file."""

_INT32_MAX = np.iinfo(np.int32).max

_LABELS = {"energies": ("energy", "eV", False), "forces": ("force", "eV/Å", True),
           "gaps": ("HOMO–LUMO gap", "eV", False), "dipoles": ("dipole", "e·Å", False),
           "charges": ("charge", "e", True)}
"""Labels of :class:`Frames` → (what one entry is, unit, one entry per atom), for the
messages of the finiteness checks."""

CG_MOLECULES = {"water": "H2O", "methane": "CH4"}
"""Word in a CG sidecar's ``"system"`` text → the chemical formula of one bead (module
docstring)."""


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
        masses     (n_atoms,) float64 or None       | amu; None = not given by the data
                                                    (elements: use their standard masses)
        coarse_grained  bool                        | species are bead ids (type + 1), not
                                                    atomic numbers; default False
        gaps       (n_frames,) float64 or None      | eV, HOMO–LUMO gap; None = not given
        dipoles    (n_frames, 3) float64 or None    | e·Å, dipole moment; None = not given
        charges    (n_frames, n_atoms) float64 or None | e, atomic partial charges;
                                                    None = not given
        name       str or None                      | the molecule's name (an xtb file's
                                                    G2 name); None = not given

    Arrays are converted to these dtypes on construction; species given as element
    symbols (``'O'``, ``'H'``) become atomic numbers. Zero frames are allowed (an empty
    selection); zero atoms are not.

    Raises:
        ValueError: when the shapes of positions, species, energies, forces, gaps, dipoles,
            charges, masses or cell disagree, there are no atoms, a species is not a positive
            integer or element symbol, a position, energy, force, gap, dipole or charge is not
            finite, a mass is not a positive finite number, or a cell is not finite or degenerate
            (:func:`jaxrel.geometry.check_cell`); the message names the frame and atom.
    """

    species: np.ndarray
    positions: np.ndarray
    energies: np.ndarray | None
    forces: np.ndarray | None
    cell: np.ndarray | None
    source: str
    masses: np.ndarray | None = None
    coarse_grained: bool = False
    gaps: np.ndarray | None = None
    dipoles: np.ndarray | None = None
    charges: np.ndarray | None = None
    name: str | None = None

    def __post_init__(self):
        for name in ("positions", "energies", "forces", "cell", "masses", "gaps", "dipoles",
                     "charges"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else np.asarray(value, np.float64))
        pos = self.positions
        if pos.ndim != 3 or pos.shape[-1] != 3:
            raise ValueError(f"{self.source}: positions have shape {pos.shape}; "
                             "give them as (n_frames, n_atoms, 3)")
        n_frames, n_atoms = pos.shape[:2]
        if n_atoms == 0:
            raise ValueError(f"{self.source} has no atoms (positions have shape {pos.shape}); "
                             "give frames with at least one atom")
        species = np.asarray(self.species)
        expected = {"species": (species, (n_atoms,)), "energies": (self.energies, (n_frames,)),
                    "forces": (self.forces, pos.shape), "masses": (self.masses, (n_atoms,)),
                    "gaps": (self.gaps, (n_frames,)), "dipoles": (self.dipoles, (n_frames, 3)),
                    "charges": (self.charges, (n_frames, n_atoms))}
        for name, (value, shape) in expected.items():
            if value is not None and value.shape != shape:
                raise ValueError(f"{self.source}: {name} have shape {value.shape} but positions "
                                 f"{pos.shape} need {shape}; fix the file so they match")
        object.__setattr__(self, "species", _atomic_numbers(species, self.source))
        if self.cell is not None and self.cell.shape not in ((3, 3), (n_frames, 3, 3)):
            raise ValueError(f"{self.source}: cell has shape {self.cell.shape}; give one (3, 3) "
                             f"cell or one per frame, ({n_frames}, 3, 3)")
        try:
            check_positions(pos, min_distance=None)
            if self.cell is not None:
                check_cell(self.cell, per_frame=True)
        except ValueError as err:
            raise ValueError(f"{self.source}: {err}") from None
        for name, (what, unit, per_atom) in _LABELS.items():
            value = getattr(self, name)
            if value is None or np.isfinite(value).all():
                continue
            # one row per frame (or per frame and atom), one or three numbers per row
            rows = value.reshape(value.shape[:2 if per_atom else 1] + (-1,))
            where = tuple(np.argwhere(~np.isfinite(rows).all(axis=-1))[0])
            atom = f", atom {where[1]}" if per_atom else ""
            raise ValueError(f"{self.source}: frame {where[0]}{atom} has a non-finite {what} "
                             f"{value[where].tolist()} {unit}; remove the frame or fix its label"
                             + ("s" if per_atom else ""))
        if self.masses is not None and not (np.isfinite(self.masses) & (self.masses > 0)).all():
            a = np.flatnonzero(~(np.isfinite(self.masses) & (self.masses > 0)))[0]
            raise ValueError(f"{self.source}: atom {a} has the mass {self.masses[a]} amu; give "
                             "positive finite masses in amu")

    def __len__(self) -> int:
        """Number of frames."""
        return self.positions.shape[0]

    def geometry(self, frame: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Positions (n_atoms, 3) Å and cell ((3, 3) Å, or None in free space) of one frame.

        Raises:
            ValueError: ``frame`` is not an index of these frames (the message names ``--frame``).
        """
        if not 0 <= frame < len(self):
            raise ValueError(f"--frame {frame} is not a frame of the {len(self)} in {self.source}; "
                             f"use 0..{len(self) - 1}")
        cell = self.cell if self.cell is None or self.cell.ndim == 2 else self.cell[frame]
        return self.positions[frame], cell

    def select(self, index) -> "Frames":
        """The frames picked by ``index``: a slice, an int index array or a bool mask.

        Per-frame arrays (positions, energies, forces, gaps, dipoles, charges, a per-frame
        cell) are indexed; species, masses, a shared (3, 3) cell, source, ``coarse_grained``
        and ``name`` are kept. The result always keeps the frame axis (an int gives one
        frame).
        """
        if not isinstance(index, slice):
            index = np.asarray(index)
            index = index.reshape(1) if index.ndim == 0 else index

        def pick(x):
            return None if x is None else x[index]

        per_frame_cell = self.cell is not None and self.cell.ndim == 3
        return replace(self, positions=pick(self.positions), energies=pick(self.energies),
                       forces=pick(self.forces), gaps=pick(self.gaps), dipoles=pick(self.dipoles),
                       charges=pick(self.charges),
                       cell=pick(self.cell) if per_frame_cell else self.cell)


def read_frames(path, format: str | None = None, molecule: str | None = None) -> Frames:
    """Read all frames of one system from ``path`` in Å, eV and eV/Å.

    Args:
        path: a ``.npz`` file in one of the layouts of :data:`NPZ_FORMATS` (see the
            module docstring), or any file ``ase.io.read`` understands (extxyz, ...).
        format: None to detect it from the file; ``"rmd17"``, ``"water_dft"``, ``"cg"``,
            ``"noble_gas"`` or ``"xtb"`` to force an npz layout; any other string is passed
            to ``ase.io.read`` as its ``format``.
        molecule: the name of one molecule of a file that holds several (an ``xtb`` file,
            e.g. ``"CH3CH2OH"``): its frames are read; None for a file of one system.

    Returns:
        :class:`Frames`. Energies/forces are None when the file holds none (CG data
        has no energies); ``cell`` is one (3, 3) array when all frames share it. An
        ``xtb`` file of one molecule also gives gaps, dipoles, charges and the name.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: as :func:`read_molecules`; when an ``xtb`` file holds more than one
            molecule and ``molecule`` names none (read it with :func:`read_molecules`); when
            ``molecule`` is not in the file, or holds frames of more than one composition.
    """
    molecules = read_molecules(path, format)
    if molecule is not None:
        picked = [f for f in molecules if f.name == molecule]
        if len(picked) != 1:
            names = sorted({f.name for f in molecules if f.name is not None})
            listed = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
            problem = "is not a molecule of" if not picked else "has frames of several compositions in"
            raise ValueError(f"--molecule {molecule} {problem} {os.fspath(path)} (molecules: {listed or 'none named'}); "
                             "give one of those names")
        return picked[0]
    if len(molecules) > 1:
        raise ValueError(f"{os.fspath(path)} holds {len(molecules)} molecules, not frames of one "
                         "system; pick one with --molecule NAME (read_frames(path, molecule=NAME)), "
                         "read them all with jaxrel.data.read_molecules, or pass the file to "
                         "'jaxrel train', which reads every molecule")
    return molecules[0]


def read_molecules(path, format: str | None = None) -> list[Frames]:
    """Read the frames of ``path`` as one :class:`Frames` per molecule, in Å, eV and eV/Å.

    An ``xtb`` npz gives one :class:`Frames` per contiguous block of frames with the same
    molecule name and species, in file order (concatenating their frames gives the file's
    frames), with padding atoms (species 0) dropped and ``name`` set to the molecule's name.
    Every other file holds one system and gives a one-element list, as
    :func:`read_frames` reads it.

    Args:
        path, format: as :func:`read_frames`.

    Returns:
        A non-empty list of :class:`Frames`, each with at least one frame.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a folder; the file is empty, truncated, corrupt, of a
            kind neither jaxrel nor ase reads, or holds no frames or no atoms; an npz
            matches no known layout or holds an array that is not numbers (text, for an
            xtb file's molecule names); shapes disagree; a species is not a positive
            integer or element symbol; a position, energy, force, gap, dipole, charge or
            cell entry is not finite; a cell is degenerate; frames of an ase file differ
            in species or periodicity, or only some carry energies/forces. Every message
            names the file and, where it applies, the key, molecule, frame and atom.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; check the path or set JAXREL_DATA "
                                "to the folder holding the data")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder; give the path of a data file inside it "
                         "(.npz, .extxyz, ...)")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes); re-download or re-write the file")
    if format in NPZ_FORMATS or (format is None and path.endswith(".npz")):
        molecules = _read_npz(path, format)
    else:
        molecules = [_read_ase(path, format)]
    if sum(len(frames) for frames in molecules) == 0:
        raise ValueError(f"{path} holds no frames; give a file with at least one frame")
    return molecules


def _read_npz(path: str, format: str | None) -> list[Frames]:
    """The frames of an npz: one :class:`Frames` per molecule of an xtb file, one for any
    other layout."""
    try:
        data = np.load(path)
    except _NPZ_ERRORS:
        raise ValueError(f"{path} is not an npz archive numpy can open (it is truncated, "
                         "corrupt or another kind of file); re-download it or write it again "
                         "with np.savez") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds one bare .npy array, not an .npz archive of named "
                         "arrays; write it with np.savez(path, coords=..., ...)")
    with data:
        keys = set(data.files)
        format = format or _detect_npz(keys, path)
        source = f"{path} ({format})"

        def get(key):
            if key not in keys:
                raise ValueError(f"{source} lacks the key {key!r} (keys found: "
                                 f"{', '.join(sorted(keys))}); the {format} layout needs "
                                 f"{NPZ_FORMATS[format]}")
            try:
                value = data[key]
            except _NPZ_ERRORS as err:
                raise ValueError(f"{source}: the array {key!r} cannot be read ({err}); "
                                 "re-download the file or write it again with np.savez, "
                                 "storing numbers only") from None
            symbols = key in SPECIES_KEYS
            if key in TEXT_KEYS:
                kinds, what = "U", "text (a numpy str_ array)"
            else:
                kinds = "iuf" + ("US" if symbols else "")
                what = "numbers" + (" or element symbols" if symbols else "")
            if value.dtype.kind not in kinds:
                raise ValueError(f"{source}: the array {key!r} holds {value.dtype} values; "
                                 f"store it as {what}")
            return value

        if format == "xtb":
            return _xtb_molecules({key: get(key) for key in XTB_KEYS}, path)
        if format == "rmd17":
            return [Frames(species=get("nuclear_charges"), positions=get("coords"),
                           energies=_kcal_to_ev(get("energies")),
                           forces=_kcal_to_ev(get("forces")), cell=None, source=source)]
        if format == "water_dft":
            return [Frames(species=get("atomic_numbers"), positions=get("coords"),
                           energies=get("energies"), forces=get("forces"),
                           cell=_shared_cell(get("cells")), source=source)]
        if format == "cg":
            positions = get("coords")
            forces = _kcal_to_ev(get("forces")) if "forces" in keys else None
            if "box" in keys:
                box = get("box")
                if box.shape != (3,):
                    raise ValueError(f"{source}: box has shape {box.shape}; give the "
                                     "orthorhombic box as its (3,) edge lengths in Å, or a "
                                     "(3, 3) cell under the key 'cell'")
                cell = np.diag(box)
            else:
                cell = get("cell")
            types = _integer_ids(get("types"), source, "type", 0,
                                 "store coarse-grained bead types as integers from 0")
            return [Frames(species=types + 1,
                           positions=positions[None] if positions.ndim == 2 else positions,
                           energies=None, forces=forces, cell=cell, source=source,
                           masses=_cg_bead_masses(path, types), coarse_grained=True)]
        return [Frames(species=get("species"), positions=get("coords"), energies=get("energies"),
                       forces=get("forces"), cell=get("cell") if "cell" in keys else None,
                       source=source)]


def _xtb_molecules(arrays: dict[str, np.ndarray], path: str) -> list[Frames]:
    """One :class:`Frames` per contiguous block of frames of one molecule (same name, same
    species row) of the :data:`XTB_KEYS` arrays of an xtb npz, padding atoms dropped.

    Raises:
        ValueError: the arrays' shapes disagree with ``coords`` (F, N, 3), a species is not
            an integer ≥ 0, a block has only padding atoms, or :class:`Frames` rejects a
            block (the message names the molecule and its frames in the file).
    """
    coords, species, names = arrays["coords"], arrays["species"], arrays["molecules"]
    if coords.ndim != 3 or coords.shape[-1] != 3:
        raise ValueError(f"{path} (xtb): coords have shape {coords.shape}; give them as "
                         "(n_frames, n_atoms, 3)")
    n_frames, n_atoms = coords.shape[:2]
    shapes = {"molecules": (n_frames,), "species": (n_frames, n_atoms), "energies": (n_frames,),
              "forces": coords.shape, "gaps": (n_frames,), "charges": (n_frames, n_atoms),
              "dipoles": (n_frames, 3)}
    for key, shape in shapes.items():
        if arrays[key].shape != shape:
            raise ValueError(f"{path} (xtb): {key} have shape {arrays[key].shape} but coords "
                             f"{coords.shape} need {shape}; fix the file so they match")
    new = np.ones(n_frames, bool)
    new[1:] = (names[1:] != names[:-1]) | (species[1:] != species[:-1]).any(axis=1)
    starts = np.flatnonzero(new)
    molecules = []
    for start, stop in zip(starts, [*starts[1:], n_frames]):
        name = str(names[start])
        source = f"{path} (xtb: {name}, frames {start}–{stop - 1})"
        row = _integer_ids(species[start], source, "species", 0,
                           "store atomic numbers, with 0 for padding atoms")
        atoms, frames = row > 0, slice(start, stop)
        molecules.append(Frames(species=row[atoms], positions=coords[frames, atoms],
                                energies=arrays["energies"][frames],
                                forces=arrays["forces"][frames, atoms], cell=None, source=source,
                                gaps=arrays["gaps"][frames], dipoles=arrays["dipoles"][frames],
                                charges=arrays["charges"][frames, atoms], name=name))
    return molecules


def _cg_bead_masses(path: str, types: np.ndarray) -> np.ndarray | None:
    """(n_beads,) bead masses in amu from the JSON sidecar of the CG npz ``path`` (same stem,
    ``.json``) by the rule of the module docstring, or None where the rule gives none."""
    try:
        with open(os.path.splitext(path)[0] + ".json", encoding="utf-8") as f:
            sidecar = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("system"), str):
        return None
    named = [formula for word, formula in CG_MOLECULES.items()
             if re.search(rf"\b{word}\b", sidecar["system"], re.IGNORECASE)]
    n_molecules = sidecar.get("n_molecules", len(types))
    if len(named) != 1 or n_molecules != len(types) or np.unique(types).size != 1:
        return None
    from ase.data import atomic_masses, atomic_numbers
    from ase.formula import Formula

    mass = sum(n * atomic_masses[atomic_numbers[symbol]] for symbol, n in Formula(named[0]).count().items())
    return np.full(len(types), mass)


def _kcal_to_ev(x: np.ndarray) -> np.ndarray:
    """kcal/mol (or kcal/mol/Å) to eV (eV/Å), computed in float64 whatever the stored dtype."""
    return x.astype(np.float64) * KCAL_PER_MOL_IN_EV


def _atomic_numbers(species: np.ndarray, source: str) -> np.ndarray:
    """(n_atoms,) species as int32 atomic numbers; element symbols become their Z (ase.data).

    Raises:
        ValueError: a symbol that is no element, or a value that is not an integer ≥ 1
            (the message names the atom).
    """
    if species.dtype.kind in "US":
        from ase.data import atomic_numbers

        symbols = [s.decode() if isinstance(s, bytes) else s for s in species.tolist()]
        z = [atomic_numbers.get(s.strip(), 0) for s in symbols]  # 0: not an element ('X' too)
        if 0 in z:
            k = z.index(0)
            raise ValueError(f"{source}: atom {k} has species {symbols[k]!r}, which is not an "
                             "element symbol; give atomic numbers or symbols such as 'H', 'C', "
                             "'O'")
        species = np.array(z)
    return _integer_ids(species, source, "species", 1,
                        "give atomic numbers (Z ≥ 1) or element symbols")


def _integer_ids(values: np.ndarray, source: str, name: str, least: int, fix: str) -> np.ndarray:
    """``values`` as int32 when every entry is an integer ≥ ``least`` (8.0 counts as 8).

    Raises:
        ValueError: a non-numeric dtype, or the first entry (named as an atom) that is not
            a finite integer in [least, 2³¹ − 1]; the message ends with ``fix``.
    """
    if values.dtype.kind not in "iuf":
        raise ValueError(f"{source}: {name} have dtype {values.dtype}; {fix}")
    flat = values.ravel()
    ok = np.isfinite(flat) & (flat == np.round(flat)) & (flat >= least) & (flat <= _INT32_MAX)
    if not ok.all():
        k = np.flatnonzero(~ok)[0]
        raise ValueError(f"{source}: atom {k} has {name} {flat[k].item()}, which is not an "
                         f"integer ≥ {least}; {fix}")
    return values.astype(np.int32)


def _detect_npz(keys: set[str], path: str) -> str:
    if "xtb_method" in keys:
        return "xtb"
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
    """One (3, 3) cell when every frame of a (n_frames, 3, 3) stack has the same one, else
    ``cells`` unchanged (any other shape is left for :class:`Frames` to report)."""
    same = cells.ndim == 3 and len(cells) > 0 and np.all(cells == cells[0])
    return cells[0] if same else cells


def _read_ase(path: str, format: str | None) -> Frames:
    import sqlite3

    import ase.io
    from ase.io.formats import UnknownFileTypeError

    # What ase's readers raise on a malformed file (ase 3.29): XYZError and
    # InvalidULMFileError are OSErrors, UnicodeDecodeError and JSONDecodeError ValueErrors;
    # some readers fail with IndexError, KeyError, AssertionError, a RuntimeError from
    # StopIteration, UnboundLocalError or sqlite3's DatabaseError.
    read_errors = (ase.io.ParseError, ValueError, OSError, EOFError, StopIteration, RuntimeError,
                   IndexError, KeyError, AssertionError, UnboundLocalError, sqlite3.Error)
    source = f"{path} (ase{'' if format is None else ' ' + format})"
    try:
        atoms_list = ase.io.read(path, index=":", format=format)
    except UnknownFileTypeError:
        if format is not None:
            raise ValueError(f"format {format!r} is neither an npz layout "
                             f"({', '.join(NPZ_FORMATS)}) nor a file format ase knows; pass one "
                             "of those, or None to detect the format") from None
        raise ValueError(f"{path} is of a kind neither jaxrel nor ase recognises from its name; "
                         "give an .npz in a known layout or a file ase reads (.extxyz, .xyz, "
                         ".traj, ...), or pass its ase format") from None
    except read_errors as err:
        reason = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {reason[0]}" if reason else type(err).__name__
        raise ValueError(f"{source} cannot be read by ase ({reason}); check that the file is "
                         "complete and in the format its name says") from None
    if not atoms_list:
        raise ValueError(f"{source} holds no frames; give a file with at least one frame")
    species = atoms_list[0].numbers
    for k, atoms in enumerate(atoms_list):
        if not np.array_equal(atoms.numbers, species):
            raise ValueError(f"{source}: frame {k} has species {atoms.numbers.tolist()} but "
                             f"frame 0 has {species.tolist()}; split the file into one file "
                             "per system")
    pbc = np.array([atoms.pbc for atoms in atoms_list])
    cell = None
    if pbc.any():
        k = np.flatnonzero(~pbc.all(axis=1))
        if k.size:
            raise ValueError(f"{source}: frame {k[0]} has pbc {pbc[k[0]].tolist()} but jaxrel "
                             "needs every frame periodic in all three directions or none; set "
                             "pbc=True (with the cell) or pbc=False for every frame")
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
