"""Ground-truth noble-gas liquids (Ar, Kr, Ar–Kr) with an exactly known n-body split.

The potential energy is a sum of Lennard-Jones pairs and Axilrod–Teller–Muto (ATM)
triple-dipole triplets, both smoothly switched off at the cutoff ``r_c``::

    E = Σ_{i<j} φ(r_ij) + Σ_{i<j<k} E_ATM(i, j, k)
    E_ATM = ν_ijk (1 + 3 cos γ_i cos γ_j cos γ_k) / (r_ij r_ik r_jk)³ · S(r_ij)S(r_ik)S(r_jk)
    φ(r) = 4 ε_ij [(σ_ij/r)¹² − (σ_ij/r)⁶] · S(r)

Every pair energy, every triplet energy and every atom's local energy
E_i = ½ Σ_{pairs ∋ i} φ + ⅓ Σ_{triplets ∋ i} E_ATM are known exactly and sum to E, so
an attribution method can be checked against them (Uhlig, Tovey & Holm 2024,
arXiv:2403.00377, study local energies of noble-gas liquids). ``three_body=False``
sets ν = 0: the null test in which 3-body relevance must vanish.

Parameters (:data:`NOBLE_GASES`):

* Ar: ε/k_B = 119.8 K, σ = 3.405 Å, the Michels et al. (1949) argon parameters as
  tabulated by Hirschfelder, Curtiss & Bird (1954) and used by Verlet (1967,
  Phys. Rev. 159, 98, DOI 10.1103/PhysRev.159.98); Rahman (1964, Phys. Rev. 136, A405,
  DOI 10.1103/PhysRev.136.A405) used the rounded 120 K and 3.4 Å.
* Kr: ε/k_B = 162.58 K, σ = 3.6274 Å (Vrabec, Stoll & Hasse 2001, J. Phys. Chem. B 105,
  12126, DOI 10.1021/jp012542o; also the krypton model of Rutkai et al. 2017,
  Mol. Phys. 115, 1104, DOI 10.1080/00268976.2016.1246760).
* Ar–Kr: Lorentz–Berthelot rules σ_ij = (σ_i + σ_j)/2, ε_ij = √(ε_i ε_j).
* ATM coefficients C9 (= ν) of Kumar & Meath (1985, Mol. Phys. 54, 823,
  DOI 10.1080/00268978500100661): Ar 517 and Kr 1572 in atomic units
  (E_h a_0⁹ = 0.0885 eV Å⁹), i.e. 45.8 and 139.2 eV Å⁹. The argon value agrees with
  ν = 73.2 × 10⁻⁸⁴ erg cm⁹ = 45.7 eV Å⁹ of Barker, Fisher & Watts (1971, Mol. Phys. 21,
  657, DOI 10.1080/00268977100101781). Mixed triplets use the geometric mean
  ν_ijk = (ν_i ν_j ν_k)^⅓.
* Masses: IUPAC standard atomic weights, 39.948 (Ar) and 83.798 (Kr) amu.

Switching function: S(r) = 1 − x³(10 − 15x + 6x²), x = (r − r_on)/(r_c − r_on) clipped
to [0, 1], r_on = :data:`SWITCH_ONSET` · r_c. S and its first two derivatives are
continuous, S(r_c) = S'(r_c) = S''(r_c) = 0, so energies and forces go smoothly to zero.

State point: the liquid argon of Rahman (1964), T = 94.4 K and 1.374 g/cm³
(n = 0.02071 Å⁻³), i.e. T* = k_B T/ε = 0.788 and ρ* = n σ³ = 0.818. Krypton and the
equimolar mixture are simulated at the same reduced state with the van der Waals
one-fluid σ_x³ = Σ x_a x_b σ_ab³ and ε_x σ_x³ = Σ x_a x_b ε_ab σ_ab³ (Leland,
Rowlinson & Sather 1968, Trans. Faraday Soc. 64, 1447, DOI 10.1039/TF9686401447).
The default cutoff is :data:`DEFAULT_CUTOFF_SIGMA` · σ_x (7.15 Å for Ar), which fits
the periodic box of 61 or more atoms; the conventional ``cutoff=8.5`` (2.5 σ_Ar) needs at
least 102 argon atoms (e.g. 108, a 3×3×3 fcc box).

Periodic boxes are cubic and at least 2 r_c wide, so every pair and triplet is counted
with the minimum image; a triplet counts only when its three minimum-image vectors close
(r_ij + r_jk + r_ki = 0), i.e. when the three atoms form one triangle in space.

Units: Å, eV, eV/Å, fs, K, amu. With eV, Å and amu the natural time unit is
√(amu Å²/eV) = :data:`TIME_UNIT_FS` ≈ 10.18 fs; the MD converts to it internally.
All energies, forces and the MD run in float64 (inside ``jax.enable_x64``; the global
setting is left as it was). :func:`pair_energy` and :func:`triplet_energy` follow the
caller's precision: call them under ``jax.enable_x64(True)`` for float64.
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition, simulate, space
from tqdm import tqdm

from jaxrel.files import savez
from jaxrel.geometry import check_cell, minimum_image
from jaxrel.graph import check_positions
from jaxrel.nn.functional import safe_norm

BOLTZMANN_EV_K = 8.617333262e-5
"""Boltzmann constant k_B, eV/K (CODATA 2018, exact)."""

TIME_UNIT_FS = float(np.sqrt(1.66053906660e-27 * 1e-20 / 1.602176634e-19) * 1e15)
"""√(amu · Å² / eV) in fs (≈ 10.1805): the time unit of MD in eV, Å, amu."""

ATOMIC_UNIT_C9_EVA9 = 27.211386245988 * 0.529177210903**9
"""One atomic unit of C9, E_h a_0⁹, in eV Å⁹ (CODATA 2018; ≈ 0.08854)."""

NOBLE_GASES: dict = {
    "Ar": {"Z": 18, "mass_amu": 39.948, "epsilon_eV": 119.8 * BOLTZMANN_EV_K,
           "sigma_A": 3.405, "c9_eVA9": 517.0 * ATOMIC_UNIT_C9_EVA9},
    "Kr": {"Z": 36, "mass_amu": 83.798, "epsilon_eV": 162.58 * BOLTZMANN_EV_K,
           "sigma_A": 3.6274, "c9_eVA9": 1572.0 * ATOMIC_UNIT_C9_EVA9},
}
"""Per element: atomic number ``Z``, ``mass_amu``, LJ ``epsilon_eV`` and ``sigma_A`` (Å),
ATM ``c9_eVA9`` (eV Å⁹). Sources in the module docstring."""

SWITCH_ONSET = 0.8
"""The switching function starts at r_on = SWITCH_ONSET · cutoff."""

REDUCED_TEMPERATURE = 94.4 / 119.8
"""T* = k_B T / ε of Rahman's (1964) liquid argon, 94.4 K."""

REDUCED_DENSITY = 1.374 / 39.948 * 6.02214076e23 * 1e-24 * 3.405**3
"""ρ* = n σ³ of Rahman's (1964) liquid argon, 1.374 g/cm³ (n = 0.02071 Å⁻³)."""

DEFAULT_CUTOFF_SIGMA = 2.1
"""Default cutoff in units of the one-fluid σ_x; fits a box of 61 or more atoms."""

THERMOSTAT_TIME_FS = 1000.0
"""Langevin damping time 1/γ, fs."""

NEIGHBOR_SKIN_A = 0.3
"""Extra neighbour-list radius beyond the cutoff (jax_md ``dr_threshold``), Å."""

MIXTURES = {"Ar": ("Ar",), "Kr": ("Kr",), "ArKr": ("Ar", "Kr")}
"""``species`` names accepted by :func:`generate_noble_gas` and their elements."""

_BY_Z = {p["Z"]: (name, p) for name, p in NOBLE_GASES.items()}
_N_TABLE = max(_BY_Z) + 1


def _table(key: str) -> np.ndarray:
    """Per-Z parameter table (NaN for elements that are not in NOBLE_GASES)."""
    table = np.full(_N_TABLE, np.nan)
    for z, (_, p) in _BY_Z.items():
        table[z] = p[key]
    return table


_EPSILON, _SIGMA = _table("epsilon_eV"), _table("sigma_A")
_CBRT_C9 = np.cbrt(_table("c9_eVA9"))


def _lookup(table: np.ndarray, z) -> jax.Array:
    return jnp.take(jnp.asarray(table), jnp.asarray(z), mode="fill", fill_value=jnp.nan)


def _switch(r, cutoff):
    """C² quintic switch: 1 below SWITCH_ONSET·cutoff, 0 at and beyond the cutoff."""
    r_on = SWITCH_ONSET * cutoff
    x = jnp.clip((r - r_on) * (1.0 / (cutoff - r_on)), 0.0, 1.0)
    return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x**2)


def pair_energy(r, z_i, z_j, cutoff) -> jax.Array:
    """Smoothly cut Lennard-Jones pair energy φ(r) = 4ε[(σ/r)¹² − (σ/r)⁶] · S(r).

    Lorentz–Berthelot mixing for unlike pairs (module docstring). Exactly 0, with
    zero first and second derivatives, at and beyond ``cutoff``; differentiable and
    NaN-free there. Broadcasts over all arguments.

    Args:
        r: distances, Å, > 0.
        z_i, z_j: atomic numbers (18 Ar, 36 Kr); any other value gives NaN.
        cutoff: r_c, Å.

    Returns:
        Pair energies, eV, with the broadcast shape of the arguments.
    """
    r = jnp.asarray(r)
    inside = r < cutoff
    r_in = jnp.where(inside, r, cutoff)
    sigma = 0.5 * (_lookup(_SIGMA, z_i) + _lookup(_SIGMA, z_j))
    epsilon = jnp.sqrt(_lookup(_EPSILON, z_i) * _lookup(_EPSILON, z_j))
    s6 = (sigma / r_in) ** 6
    return jnp.where(inside, 4.0 * epsilon * (s6 * s6 - s6) * _switch(r_in, cutoff), 0.0)


def triplet_energy(r_ij, r_ik, r_jk, z_i, z_j, z_k, cutoff) -> jax.Array:
    """Smoothly cut Axilrod–Teller–Muto triple-dipole energy of a triangle.

    E = ν (1 + 3 cos γ_i cos γ_j cos γ_k) / (r_ij r_ik r_jk)³ · S(r_ij) S(r_ik) S(r_jk),
    with the interior angles γ from the three sides by the law of cosines and
    ν = (ν_i ν_j ν_k)^⅓ (Axilrod & Teller 1943, J. Chem. Phys. 11, 299,
    DOI 10.1063/1.1723844; Muto 1943, Proc. Phys.-Math. Soc. Jpn. 17, 629). Symmetric
    under any permutation of the three atoms; 0 (and NaN-free under differentiation) when
    any side reaches ``cutoff``. Broadcasts over all arguments.

    Args:
        r_ij, r_ik, r_jk: the three side lengths, Å, > 0, satisfying the triangle
            inequality.
        z_i, z_j, z_k: atomic numbers (18 Ar, 36 Kr); any other value gives NaN.
        cutoff: r_c, Å.

    Returns:
        Triplet energies, eV, with the broadcast shape of the arguments.
    """
    r_ij, r_ik, r_jk = jnp.asarray(r_ij), jnp.asarray(r_ik), jnp.asarray(r_jk)
    inside = (r_ij < cutoff) & (r_ik < cutoff) & (r_jk < cutoff)
    a, b, c = (jnp.where(inside, r, cutoff) for r in (r_ij, r_ik, r_jk))
    a2, b2, c2 = a * a, b * b, c * c
    # 1 + 3 cos γ_i cos γ_j cos γ_k = 1 + 3 p / (8 a² b² c²) by the law of cosines.
    p = (a2 + b2 - c2) * (a2 + c2 - b2) * (b2 + c2 - a2)
    inv = 1.0 / (a * b * c)
    nu = _lookup(_CBRT_C9, z_i) * _lookup(_CBRT_C9, z_j) * _lookup(_CBRT_C9, z_k)
    e = nu * inv**3 * (1.0 + 0.375 * p * inv * inv)
    return jnp.where(inside, e * _switch(a, cutoff) * _switch(b, cutoff) * _switch(c, cutoff), 0.0)


def _total_energy(positions, species, neighbors, box, cutoff, three_body):
    """Total energy (eV) from a dense neighbour array (N, K), padding value N.

    Each neighbour of i must appear once; neighbours beyond the cutoff contribute 0.
    Pairs are counted from both ends (factor ½). A triangle is counted from each corner
    i over the ordered pairs of its neighbour slots (factor ⅙), with the third side
    |r_ik − r_ij| so that it is the side of the same triangle in space; the slot pairs
    are dense (N, K, K) arrays, which is faster on CPU than gathering a triplet list.
    """
    n, k = neighbors.shape
    mask = neighbors < n
    j = jnp.where(mask, neighbors, 0)
    d = positions[j] - positions[:, None, :]
    d = jnp.where(mask[..., None], d - box * jnp.round(d / box), cutoff)
    r = safe_norm(d)
    z_i, z_j = species[:, None], species[j]
    energy = 0.5 * jnp.sum(pair_energy(r, z_i, z_j, cutoff))
    if not three_body:
        return energy
    r2_jk = r[:, :, None] ** 2 + r[:, None, :] ** 2 - 2.0 * jnp.einsum("iad,ibd->iab", d, d)
    valid = mask[:, :, None] & mask[:, None, :] & ~np.eye(k, dtype=bool) & (r2_jk < cutoff**2)
    r_jk = jnp.where(valid, jnp.sqrt(jnp.where(valid, r2_jk, 1.0)), cutoff)
    e3 = triplet_energy(r[:, :, None], r[:, None, :], r_jk, z_i[:, :, None], z_j[:, :, None],
                        z_j[:, None, :], cutoff)
    return energy + jnp.sum(e3) / 6.0


@functools.partial(jax.jit, static_argnames=("cutoff", "three_body"))
def _energy_forces(positions, species, neighbors, box, cutoff, three_body):
    """Energy (eV) and forces −∂E/∂x ((N, 3) eV/Å) of one frame."""
    energy, grad = jax.value_and_grad(_total_energy)(positions, species, neighbors, box, cutoff,
                                                     three_body)
    return energy, -grad


def _check_species(species) -> np.ndarray:
    z = np.asarray(species)
    if z.ndim != 1 or not np.issubdtype(z.dtype, np.integer):
        raise ValueError(f"species must be a 1-d integer array of atomic numbers, got "
                         f"shape {z.shape} and dtype {z.dtype}")
    bad = np.flatnonzero(~np.isin(z, list(_BY_Z)))
    if bad.size:
        known = ", ".join(f"{zz} ({name})" for zz, (name, _) in sorted(_BY_Z.items()))
        raise ValueError(f"atom {bad[0]} has species {z[bad[0]]}, which has no noble-gas "
                         f"parameters (known: {known})")
    return z.astype(np.int32)


def _check_box(box: np.ndarray, cutoff: float, n_atoms: int) -> None:
    """ValueError unless ``cutoff`` > 0 and the orthorhombic box (3,) Å of ``n_atoms`` atoms
    is at least twice the cutoff wide (:func:`jaxrel.geometry.check_cell`)."""
    check_cell(np.diag(box), cutoff, fix=f"use more than {n_atoms} atoms or a cutoff of at most "
               f"{np.min(box) / 2.0:.3f} Å, since the box must be at least twice the cutoff")


def _frame_geometry(positions: np.ndarray, box: np.ndarray, cutoff: float):
    """Pairs and triangles within the cutoff of one frame (minimum image, host numpy).

    Returns:
        ``(adjacency (N, N) bool, pairs (P, 2) i<j, pair distances (P,),
        triplets (M, 3) i<j<k, triplet sides (M, 3) as r_ij, r_ik, r_jk)``.
    """
    n = positions.shape[0]
    d = positions[None, :, :] - positions[:, None, :]
    d = minimum_image(d, np.diag(box))
    r = np.linalg.norm(d, axis=-1)
    adj = r < cutoff
    np.fill_diagonal(adj, False)
    i, j = np.nonzero(np.triu(adj, k=1))
    triplets = []
    for a in range(n):
        nb = np.flatnonzero(adj[a, a + 1:]) + a + 1
        jj, kk = np.nonzero(np.triu(adj[np.ix_(nb, nb)], k=1))
        jj, kk = nb[jj], nb[kk]
        closes = np.all(np.abs(d[a, kk] - d[a, jj] - d[jj, kk]) < 0.5 * box, axis=-1)
        triplets.append(np.stack([np.full(jj.size, a), jj, kk], axis=-1)[closes])
    t = np.concatenate(triplets).astype(np.int32).reshape(-1, 3)
    sides = np.stack([r[t[:, 0], t[:, 1]], r[t[:, 0], t[:, 2]], r[t[:, 1], t[:, 2]]], axis=-1)
    return adj, np.stack([i, j], axis=-1).astype(np.int32), r[i, j], t, sides


def _dense_neighbors(adjacency: np.ndarray) -> np.ndarray:
    """Dense neighbour array (N, K) padded with N; K a multiple of 8 (fewer recompiles)."""
    n = adjacency.shape[0]
    k = -(-max(1, int(adjacency.sum(axis=1).max())) // 8) * 8
    out = np.full((n, k), n, dtype=np.int32)
    for i in range(n):
        nb = np.flatnonzero(adjacency[i])
        out[i, :nb.size] = nb
    return out


def _padded(a: np.ndarray, value) -> np.ndarray:
    """``a`` padded along its first axis to a power of two ≥ 256 (few jit shapes)."""
    n = max(256, 1 << (len(a) - 1).bit_length())
    return np.pad(a, [(0, n - len(a))] + [(0, 0)] * (a.ndim - 1), constant_values=value)


def _listed_energies(pair_distance, pair_species, triplet_sides, triplet_species, cutoff):
    """Energies (eV) of listed pairs (P,) and triplets (M,) from one jitted call.

    Padding entries sit at the cutoff (zero energy) and are cut off again.
    """
    ar = NOBLE_GASES["Ar"]["Z"]
    e2, e3 = _listed_energies_jit(_padded(pair_distance, cutoff), _padded(pair_species, ar),
                                  _padded(triplet_sides, cutoff), _padded(triplet_species, ar),
                                  cutoff)
    return np.asarray(e2)[:len(pair_distance)], np.asarray(e3)[:len(triplet_sides)]


@functools.partial(jax.jit, static_argnames="cutoff")
def _listed_energies_jit(r, pair_species, sides, triplet_species, cutoff):
    return (pair_energy(r, pair_species[:, 0], pair_species[:, 1], cutoff),
            triplet_energy(sides[:, 0], sides[:, 1], sides[:, 2], triplet_species[:, 0],
                           triplet_species[:, 1], triplet_species[:, 2], cutoff))


def _label(positions: np.ndarray, species: np.ndarray, box: np.ndarray, cutoff: float,
           three_body: bool) -> dict:
    """Exact energies, forces and the pair/triplet/local decomposition of frames (F, N, 3)."""
    n_frames, n = positions.shape[:2]
    geometry = [_frame_geometry(x, box, cutoff) for x in positions]
    with jax.enable_x64(True):
        z, box_j = jnp.asarray(species), jnp.asarray(box)
        labels = [_energy_forces(jnp.asarray(x), z, jnp.asarray(_dense_neighbors(g[0])), box_j,
                                 float(cutoff), bool(three_body))
                  for x, g in zip(positions, geometry)]
        energies = np.array([float(e) for e, _ in labels])
        forces = np.stack([np.asarray(f) for _, f in labels])
        pairs = np.concatenate([g[1] for g in geometry])
        pair_distance = np.concatenate([g[2] for g in geometry])
        triplets = np.concatenate([g[3] for g in geometry])
        sides = np.concatenate([g[4] for g in geometry])
        pair_e, triplet_e = _listed_energies(pair_distance, species[pairs], sides,
                                             species[triplets], float(cutoff))
    if not three_body:
        triplet_e = np.zeros(len(triplets))
    pair_frame = np.repeat(np.arange(n_frames, dtype=np.int32), [len(g[1]) for g in geometry])
    triplet_frame = np.repeat(np.arange(n_frames, dtype=np.int32), [len(g[3]) for g in geometry])
    local = np.zeros(n_frames * n)
    for k in range(2):
        local += np.bincount(pair_frame * n + pairs[:, k], 0.5 * pair_e, n_frames * n)
    for k in range(3):
        local += np.bincount(triplet_frame * n + triplets[:, k], triplet_e / 3.0, n_frames * n)
    return {"energies": energies, "forces": forces, "local_energies": local.reshape(n_frames, n),
            "pair_frame": pair_frame, "pair_atoms": pairs, "pair_distance": pair_distance,
            "pair_energy": pair_e, "triplet_frame": triplet_frame, "triplet_atoms": triplets,
            "triplet_sides": sides, "triplet_energy": triplet_e}


def decompose(positions, species, cell, cutoff, three_body=True) -> dict:
    """Exact energy, forces and n-body decomposition of one periodic frame.

    The total energy and forces (−∂E/∂x by ``jax.grad``) come from a neighbour-array
    evaluation of E that is independent of the pair and triplet enumeration, so
    ``energy == pair_energy.sum() + triplet_energy.sum()`` is a genuine check.
    All in float64.

    Args:
        positions: (N, 3) Å.
        species: (N,) int atomic numbers, 18 (Ar) or 36 (Kr).
        cell: (3, 3) Å, rows are the cell vectors; must be diagonal (orthorhombic).
        cutoff: r_c, Å.
        three_body: include the ATM term (False: ν = 0, triplets listed with energy 0).

    Returns:
        A dict of numpy arrays::

            energy          ()       eV   | total potential energy
            forces          (N, 3)   eV/Å | −∂E/∂positions
            local_energies  (N,)     eV   | ½ Σ own pair energies + ⅓ Σ own triplet energies
            pair_atoms      (P, 2)   int32 | i < j, minimum-image distance < cutoff
            pair_distance   (P,)     Å
            pair_energy     (P,)     eV
            triplet_atoms   (M, 3)   int32 | i < j < k, one triangle with all sides < cutoff
            triplet_sides   (M, 3)   Å    | r_ij, r_ik, r_jk
            triplet_energy  (M,)     eV

    Raises:
        ValueError: unknown species, mismatched shapes, a non-orthorhombic cell, a cell
            narrower than twice the cutoff, a non-finite position or two atoms closer
            than 0.1 Å (where the Lennard-Jones energy overflows).
    """
    z = _check_species(species)
    x = np.asarray(positions, dtype=np.float64)
    if x.shape != (z.size, 3):
        raise ValueError(f"positions must have shape ({z.size}, 3) to match species, "
                         f"got {x.shape}")
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape != (3, 3) or np.any(cell != np.diag(np.diag(cell))):
        raise ValueError(f"cell must be a diagonal (3, 3) array (orthorhombic box), got\n{cell}")
    box = np.diag(cell).copy()
    _check_box(box, float(cutoff), z.size)
    check_positions(x, min_distance=0.1, cell=cell)
    out = _label(x[None], z, box, float(cutoff), three_body)
    frame = {"energy": out["energies"][0], "forces": out["forces"][0],
             "local_energies": out["local_energies"][0]}
    frame.update({k: out[k] for k in ("pair_atoms", "pair_distance", "pair_energy",
                                      "triplet_atoms", "triplet_sides", "triplet_energy")})
    return frame


def _check_settings(n_atoms, n_frames, seed, temperature, cutoff, dt_fs, steps_between_frames,
                    equilibration_steps) -> None:
    """ValueError naming the first run setting that cannot give a finite data set.

    Settings that ``jaxrel generate noble-gas`` exposes are named by their option.
    """
    counts = {"--atoms": (n_atoms, 1), "--frames": (n_frames, 1), "--seed": (seed, 0),
              "steps_between_frames": (steps_between_frames, 1),
              "equilibration_steps": (equilibration_steps, 0)}
    for name, (value, least) in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{name} {value} must be an integer ≥ {least}")
    argon = NOBLE_GASES["Ar"]
    amounts = {
        "--temperature": (temperature, "K", "leave it out for the liquid state point "
                          f"({REDUCED_TEMPERATURE * argon['epsilon_eV'] / BOLTZMANN_EV_K:.1f} K "
                          "for argon)"),
        "--cutoff": (cutoff, "Å", f"leave it out for {DEFAULT_CUTOFF_SIGMA} σ "
                     f"({DEFAULT_CUTOFF_SIGMA * argon['sigma_A']:.2f} Å for argon)"),
        "dt_fs": (dt_fs, "fs", "the default is 10 fs")}
    for name, (value, unit, hint) in amounts.items():
        if value is not None and not (isinstance(value, numbers.Real) and np.isfinite(value)
                                      and value > 0):
            raise ValueError(f"{name} {value} {unit} must be a positive number; {hint}")


def _check_finite(arrays: dict) -> None:
    """FloatingPointError naming the first frame (leading axis) where an array is not finite."""
    for name, value in arrays.items():
        bad = ~np.isfinite(np.reshape(value, (len(value), -1))).all(axis=1)
        if bad.any():
            raise FloatingPointError(f"the generated {name} of frame {np.argmax(bad)} are not "
                                     "finite (the MD became unstable); lower --temperature or "
                                     "the time step dt_fs")


def _one_fluid(z: np.ndarray) -> tuple[float, float]:
    """Van der Waals one-fluid ε_x (eV) and σ_x (Å) of a composition (module docstring)."""
    zs, counts = np.unique(z, return_counts=True)
    x = counts / z.size
    w = x[:, None] * x[None, :]
    sigma3 = (0.5 * (_SIGMA[zs][:, None] + _SIGMA[zs][None, :])) ** 3
    epsilon = np.sqrt(_EPSILON[zs][:, None] * _EPSILON[zs][None, :])
    sigma3_x = np.sum(w * sigma3)
    return float(np.sum(w * epsilon * sigma3) / sigma3_x), float(sigma3_x ** (1.0 / 3.0))


class NobleGasTrajectory(NamedTuple):
    """Frames sampled by :func:`sample_noble_gas` (float64).

    Fields::

        positions      (F, N, 3) Å    | wrapped into the box
        velocities     (F, N, 3) Å/fs
        species                (N,)      int32 | atomic numbers
        cell                   (3, 3)    Å    | cubic, rows are cell vectors
        kinetic_temperature_K  (F,)      K    | Σ m v² / (3 N k_B) of each frame
        temperature_K          ()        K    | thermostat temperature
        cutoff                 ()        Å
    """

    positions: np.ndarray
    velocities: np.ndarray
    species: np.ndarray
    cell: np.ndarray
    kinetic_temperature_K: np.ndarray
    temperature_K: float
    cutoff: float


@functools.lru_cache(maxsize=16)
def _md(n_atoms: int, side: float, cutoff: float, three_body: bool, dt: float, kt: float,
        gamma: float):
    """Neighbour-list function, Langevin init and a jitted block of steps for one set-up."""
    box = jnp.full(3, side)
    displacement, shift = space.periodic(box)
    neighbor_fn = partition.neighbor_list(
        displacement, box, cutoff, dr_threshold=NEIGHBOR_SKIN_A, disable_cell_list=True,
        format=partition.NeighborListFormat.Dense)

    def energy_fn(positions, neighbor, species):
        return _total_energy(positions, species, neighbor.idx, box, cutoff, three_body)

    init_fn, step_fn = simulate.nvt_langevin(energy_fn, shift, dt, kt, gamma=gamma)

    @jax.jit
    def advance(state, neighbor, species, n_steps):
        def body(_, carry):
            state, neighbor = carry
            state = step_fn(state, neighbor=neighbor, species=species)
            return state, neighbor.update(state.position)
        return jax.lax.fori_loop(0, n_steps, body, (state, neighbor))

    return neighbor_fn, init_fn, advance


def _initial_positions(n_atoms: int, side: float, rng: np.random.Generator) -> np.ndarray:
    """A random subset of the sites of the smallest fcc lattice with ≥ n_atoms sites, jittered."""
    m = int(np.ceil((n_atoms / 4.0) ** (1.0 / 3.0) - 1e-9))
    cells = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    sites = ((cells + basis).reshape(-1, 3) + 0.25) * (side / m)
    chosen = np.sort(rng.choice(len(sites), n_atoms, replace=False))
    return np.mod(sites[chosen] + rng.normal(scale=0.05, size=(n_atoms, 3)), side)


def _elements(species: str, n_atoms: int, rng: np.random.Generator) -> np.ndarray:
    if species not in MIXTURES:
        raise ValueError(f"species must be one of {sorted(MIXTURES)}, got {species!r}")
    names = MIXTURES[species]
    z = np.array([NOBLE_GASES[names[k * len(names) // n_atoms]]["Z"] for k in range(n_atoms)])
    return rng.permutation(z).astype(np.int32)


def sample_noble_gas(species="Ar", n_atoms=64, n_frames=50, seed=0, temperature=None,
                     cutoff=None, three_body=True, dt_fs=10.0, steps_between_frames=20,
                     equilibration_steps=1000, progress=False) -> NobleGasTrajectory:
    """Sample a periodic noble-gas liquid with JAX-MD Langevin NVT dynamics (float64).

    Atoms start on a jittered random subset of fcc sites in a cubic box at the reduced
    density of Rahman's (1964) liquid argon, get Maxwell–Boltzmann velocities, are
    equilibrated for ``equilibration_steps`` and then sampled every
    ``steps_between_frames`` steps. The force is −∇E of the total energy; the
    thermostat is BAOAB Langevin (jax_md ``simulate.nvt_langevin``, Davidchack,
    Ouldridge & Tretyakov 2015) with damping time :data:`THERMOSTAT_TIME_FS`.
    Neighbour lists come from ``jax_md.partition`` (dense, skin
    :data:`NEIGHBOR_SKIN_A`); an overflowing list is reallocated and the block redone.
    Deterministic in ``seed``.

    Args:
        species: "Ar", "Kr" or "ArKr" (equimolar mixture, atoms assigned at random; Ar
            gets the extra atom when N is odd).
        n_atoms: number of atoms N.
        n_frames: number of frames F.
        seed: integer seed for the lattice subset, jitter, species and dynamics.
        temperature: thermostat temperature, K; None for the reduced state T* = 0.788.
        cutoff: r_c, Å; None for DEFAULT_CUTOFF_SIGMA · σ_x.
        three_body: include the ATM term in the dynamics.
        dt_fs: time step, fs.
        steps_between_frames: MD steps between stored frames.
        equilibration_steps: MD steps before the first frame.
        progress: show a progress bar over the MD blocks (equilibration, then one per frame).

    Returns:
        A :class:`NobleGasTrajectory`.

    Raises:
        ValueError: unknown ``species``; a count (``n_atoms``, ``n_frames``,
            ``steps_between_frames``) below 1, or ``seed`` or ``equilibration_steps``
            below 0; a ``temperature``, ``cutoff`` or ``dt_fs`` that is not a positive
            number; or a box narrower than twice the cutoff. Messages name the
            ``jaxrel generate noble-gas`` option (``--temperature``, ...) where there is one.
        FloatingPointError: the MD produced a non-finite position or velocity.
    """
    _check_settings(n_atoms, n_frames, seed, temperature, cutoff, dt_fs, steps_between_frames,
                    equilibration_steps)
    rng = np.random.default_rng(seed)
    z = _elements(species, n_atoms, rng)
    epsilon_x, sigma_x = _one_fluid(z)
    if temperature is None:
        temperature = REDUCED_TEMPERATURE * epsilon_x / BOLTZMANN_EV_K
    target = float(temperature)
    side = float((n_atoms / REDUCED_DENSITY) ** (1.0 / 3.0) * sigma_x)
    cutoff = DEFAULT_CUTOFF_SIGMA * sigma_x if cutoff is None else float(cutoff)
    _check_box(np.full(3, side), cutoff, n_atoms)
    mass = np.array([_BY_Z[int(zz)][1]["mass_amu"] for zz in z])
    kt = BOLTZMANN_EV_K * target
    positions, velocities = [], []
    with jax.enable_x64(True):
        neighbor_fn, init_fn, advance = _md(n_atoms, side, cutoff, bool(three_body),
                                            dt_fs / TIME_UNIT_FS, kt,
                                            TIME_UNIT_FS / THERMOSTAT_TIME_FS)
        x0 = jnp.asarray(_initial_positions(n_atoms, side, rng))
        zj = jnp.asarray(z)
        neighbor = neighbor_fn.allocate(x0)
        state = init_fn(jax.random.PRNGKey(seed), x0, mass=jnp.asarray(mass), neighbor=neighbor,
                        species=zj)
        blocks = [equilibration_steps] + [steps_between_frames] * n_frames
        if progress:
            blocks = tqdm(blocks, desc=f"{species} MD", unit="block")
        for k, n_steps in enumerate(blocks):
            new_state, new_neighbor = advance(state, neighbor, zj, n_steps)
            while new_neighbor.did_buffer_overflow:
                neighbor = neighbor_fn.allocate(state.position,
                                                extra_capacity=neighbor.idx.shape[1] // 4)
                new_state, new_neighbor = advance(state, neighbor, zj, n_steps)
            state, neighbor = new_state, new_neighbor
            if k > 0:
                positions.append(np.asarray(state.position))
                velocities.append(np.asarray(state.momentum / state.mass) / TIME_UNIT_FS)
    positions, velocities = np.stack(positions), np.stack(velocities)
    _check_finite({"positions": positions, "velocities": velocities})
    kinetic = np.sum(mass[:, None] * (velocities * TIME_UNIT_FS) ** 2, axis=(1, 2))
    return NobleGasTrajectory(positions=positions, velocities=velocities, species=z,
                              cell=np.eye(3) * side,
                              kinetic_temperature_K=kinetic / (3 * n_atoms * BOLTZMANN_EV_K),
                              temperature_K=target, cutoff=cutoff)


def generate_noble_gas(species="Ar", n_atoms=64, n_frames=50, seed=0, temperature=None,
                       cutoff=None, three_body=True, dt_fs=10.0, steps_between_frames=20,
                       equilibration_steps=1000, progress=False) -> dict:
    """Sample a noble-gas liquid and label every frame with its exact n-body decomposition.

    Runs :func:`sample_noble_gas` (same arguments) and evaluates each frame as
    :func:`decompose` does, in float64.

    Returns:
        A dict of numpy arrays with exactly these keys (F frames, N atoms)::

            species         (N,)       int32   | atomic numbers (Ar 18, Kr 36)
            coords          (F, N, 3)  float64 | Å, wrapped into the box
            energies        (F,)       float64 | eV, total potential energy
            forces          (F, N, 3)  float64 | eV/Å, −∂E/∂coords
            cell            (3, 3)     float64 | Å, cubic, rows are cell vectors
            local_energies  (F, N)     float64 | eV, ½ Σ own pairs + ⅓ Σ own triplets
            pair_frame      (P,)       int32   | frame of each pair
            pair_atoms      (P, 2)     int32   | i < j, minimum-image distance < cutoff
            pair_distance   (P,)       float64 | Å
            pair_energy     (P,)       float64 | eV
            triplet_frame   (M,)       int32   | frame of each triplet
            triplet_atoms   (M, 3)     int32   | i < j < k, one triangle, all sides < cutoff
            triplet_energy  (M,)       float64 | eV (0 when three_body is False)
            cutoff          ()         float64 | Å
            temperature_K   ()         float64 | K, thermostat temperature
            three_body      ()         bool
            seed            ()         int64

    Raises:
        ValueError: as :func:`sample_noble_gas`, e.g. a ``temperature`` that is not
            positive or a box narrower than twice the cutoff (use more atoms or a smaller
            cutoff).
        FloatingPointError: a position, velocity, energy, force or local energy of the
            result is not finite (the message names the frame).
    """
    traj = sample_noble_gas(species, n_atoms, n_frames, seed, temperature, cutoff, three_body,
                            dt_fs, steps_between_frames, equilibration_steps, progress)
    out = _label(traj.positions, traj.species, np.diag(traj.cell).copy(), traj.cutoff,
                 three_body)
    _check_finite({key: out[key] for key in ("energies", "forces", "local_energies")})
    return {"species": traj.species, "coords": traj.positions, "energies": out["energies"],
            "forces": out["forces"], "cell": traj.cell, "local_energies": out["local_energies"],
            "pair_frame": out["pair_frame"], "pair_atoms": out["pair_atoms"],
            "pair_distance": out["pair_distance"], "pair_energy": out["pair_energy"],
            "triplet_frame": out["triplet_frame"], "triplet_atoms": out["triplet_atoms"],
            "triplet_energy": out["triplet_energy"], "cutoff": np.float64(traj.cutoff),
            "temperature_K": np.float64(traj.temperature_K), "three_body": np.bool_(three_body),
            "seed": np.int64(seed)}


def save_noble_gas(data: dict, path) -> None:
    """Write a :func:`generate_noble_gas` dict to ``path`` (an .npz, uncompressed), atomically
    (:func:`jaxrel.files.savez`: a killed run leaves the old file or the new one)."""
    savez(path, **data)
