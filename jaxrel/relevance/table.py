"""One table type for n-body terms of one body order over one or many frames.

A :class:`Table` is what every decomposition produces (GNN-LRP n-body relevance here; the
same schema serves any other n-body decomposition) and what every analysis reads. Fields
for m terms of body order n::

    frame      (m,)             int32   | frame number of the term (index into the source data)
    atoms      (m, n)           int32   | atom indices within the frame, sorted ascending
    species    (m, n)           int32   | atomic numbers (bead ids for coarse-grained data)
    relevance  (m,)             float64 | eV
    distances  (m, n(n−1)/2)    float64 | Å, pairs (0,1), (0,2), …, (1,2), … of the set as one cluster
    angles     (m, 3)           float64 | degrees, the angle at atoms[:, 0], [:, 1], [:, 2] (n = 3 only, else None)
    forces     (m, n, 3)        float64 | eV/Å, −∂(term)/∂x of each of the term's atoms (optional: decompositions
                                          whose terms are functions of positions, i.e. the many-body expansion)
    spread     (m,)             float64 | eV, standard deviation of the term over an ensemble of seeds, whose mean
                                          is ``relevance`` (optional: :func:`~jaxrel.relevance.ensemble_mean`)
    prior      (m,)             float64 | eV, the part of ``relevance`` that is the model's fixed pair prior
                                          φ_ab(r) (optional, 2-body tables of models with a prior,
                                          :mod:`jaxrel.models.prior`); ``relevance − prior`` is the network's
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from jaxrel.geometry import cluster_coordinates

COLUMNS = ("frame", "atoms", "species", "relevance", "distances", "angles", "forces", "spread", "prior")
"""Every column; ``angles`` (3-body only), ``forces``, ``spread`` and ``prior`` may be None."""
OPTIONAL = ("angles", "forces", "spread", "prior")
"""The columns that may be None."""


@dataclass(frozen=True)
class Table:
    """n-body terms of one body order; see the module docstring for the fields.

    Raises:
        ValueError: (at construction) columns whose shapes disagree with each other or
            with the body order, or angles given for an order other than 3 (or missing for 3).
    """

    frame: np.ndarray
    atoms: np.ndarray
    species: np.ndarray
    relevance: np.ndarray
    distances: np.ndarray
    angles: np.ndarray | None = None
    forces: np.ndarray | None = None
    spread: np.ndarray | None = None
    prior: np.ndarray | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "frame", np.asarray(self.frame, np.int32).reshape(-1))
        m = len(self.frame)
        atoms = np.asarray(self.atoms, np.int32)
        n = atoms.shape[1] if atoms.ndim == 2 else 0
        set_(self, "atoms", atoms)
        set_(self, "species", np.asarray(self.species, np.int32))
        set_(self, "relevance", np.asarray(self.relevance, np.float64))
        set_(self, "distances", np.asarray(self.distances, np.float64))
        for key in OPTIONAL:
            if getattr(self, key) is not None:
                set_(self, key, np.asarray(getattr(self, key), np.float64))
        widths = {"atoms": (m, n), "species": (m, n), "relevance": (m,), "distances": (m, n * (n - 1) // 2)}
        if n == 3:
            widths["angles"] = (m, 3)
        if self.forces is not None:
            widths["forces"] = (m, n, 3)
        for key in ("spread", "prior"):
            if getattr(self, key) is not None:
                widths[key] = (m,)
        for key, shape in widths.items():
            value = getattr(self, key)
            if value is None or value.shape != shape:
                raise ValueError(f"the {n}-body table's {key} has shape "
                                 f"{None if value is None else value.shape}, expected {shape}")
        if n != 3 and self.angles is not None:
            raise ValueError(f"only 3-body tables have angles, this one is {n}-body")

    @property
    def order(self) -> int:
        """The body order n (atoms per term)."""
        return self.atoms.shape[1]

    def __len__(self) -> int:
        return len(self.frame)

    @classmethod
    def from_terms(cls, atoms: np.ndarray, relevance: np.ndarray, positions: np.ndarray,
                   species: np.ndarray, cell: np.ndarray | None = None, frame: int = 0,
                   forces: np.ndarray | None = None) -> "Table":
        """The table of one frame's terms, with distances and angles from its geometry.

        Each set's geometry is that of one cluster (:func:`jaxrel.geometry.cluster_coordinates`:
        minimum images from its most central atom), so a periodic triplet's sides and
        angles describe one triangle.

        Args:
            atoms: (m, n) int atom indices, each row sorted ascending.
            relevance: (m,) eV.
            positions: (n_atoms, 3) Å; species: (n_atoms,) int; cell: (3, 3) Å rows or None.
            frame: the frame number written into the ``frame`` column.
            forces: (m, n, 3) eV/Å per-term forces on the term's atoms, or None.
        """
        atoms = np.asarray(atoms, np.int32)
        n = atoms.shape[1]
        x = cluster_coordinates(positions, atoms, None if cell is None else np.asarray(cell, np.float64))

        def vector(a, b):
            return x[:, b] - x[:, a]

        pairs = list(itertools.combinations(range(n), 2))
        distances = (np.stack([np.linalg.norm(vector(a, b), axis=-1) for a, b in pairs], axis=1)
                     if pairs else np.zeros((len(atoms), 0)))
        angles = None
        if n == 3:
            angles = np.zeros((len(atoms), 3))
            for c in range(3):
                u, v = vector(c, (c + 1) % 3), vector(c, (c + 2) % 3)
                cos = np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
                angles[:, c] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        return cls(frame=np.full(len(atoms), frame, np.int32), atoms=atoms,
                   species=np.asarray(species)[atoms], relevance=relevance, distances=distances,
                   angles=angles, forces=forces)

    @classmethod
    def concatenate(cls, tables: list["Table"]) -> "Table":
        """One table of the rows of several tables of the same body order, in order.

        Raises:
            ValueError: no tables, or tables of different body orders.
        """
        if not tables:
            raise ValueError("no tables to concatenate")
        orders = {t.order for t in tables}
        if len(orders) > 1:
            raise ValueError(f"cannot concatenate tables of body orders {sorted(orders)}")
        for key in ("forces", "spread", "prior"):
            if len({getattr(t, key) is None for t in tables}) > 1:
                raise ValueError(f"cannot concatenate tables with and without the {key} column")

        def joined(key):
            return None if getattr(tables[0], key) is None else np.concatenate([getattr(t, key) for t in tables])

        return cls(**{key: joined(key) for key in COLUMNS})

    def select(self, rows: np.ndarray) -> "Table":
        """The rows ``rows`` (a boolean mask or integer indices) as a new table."""
        return Table(**{key: None if getattr(self, key) is None else getattr(self, key)[rows] for key in COLUMNS})

    def with_relevance(self, values: np.ndarray) -> "Table":
        """The same terms with other values (m,), eV (e.g. the exact energies of the same
        terms); per-term forces, spreads and prior parts, which belong to the old values, are dropped."""
        return replace(self, relevance=values, forces=None, spread=None, prior=None)

    def with_prior(self, prior: np.ndarray, add: bool) -> "Table":
        """The table with its ``prior`` column (m,) eV set; ``add`` also adds it to the relevance
        (for decompositions of the network alone, e.g. GNN-LRP, whose walks never see the prior)."""
        return replace(self, prior=prior, relevance=self.relevance + prior if add else self.relevance)

    def frame_sums(self, frames: np.ndarray, absolute: bool = False) -> np.ndarray:
        """Σ relevance (or ``Σ |relevance|``) of the rows of each frame number in ``frames``, eV.

        Raises:
            ValueError: a row's frame number is not in ``frames``.
        """
        values = np.abs(self.relevance) if absolute else self.relevance
        return np.bincount(frame_positions(self.frame, frames), values, len(frames))


def frame_positions(frame: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Position of each entry of ``frame`` within the frame numbers ``frames``.

    Raises:
        ValueError: an entry that ``frames`` does not list.
    """
    frames = np.asarray(frames)
    frame = np.asarray(frame)
    order = np.argsort(frames)
    pos = np.clip(np.searchsorted(frames[order], frame), 0, max(len(frames) - 1, 0))
    found = frames[order][pos] == frame if len(frames) else np.zeros(len(frame), bool)
    if not found.all():
        raise ValueError(f"the tables list frame {int(frame[~found][0])}, which the explanation does not "
                         f"(frames: {', '.join(map(str, frames.tolist()))})")
    return order[pos]
