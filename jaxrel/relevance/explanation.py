"""One owner for an explanation: :func:`explain` makes an :class:`Explanation`, which is the
only writer and reader of an explained folder (``nbody.npz`` + ``summary.json``).

An explanation of frames by GNN-LRP (Schnake et al., "Higher-order explanations of graph
neural networks via relevant walks", TPAMI 2022, arXiv:2006.03589; subgraph relevance by
Xiong et al., ICML 2022) holds

* the exact n-body relevance terms of each body order, one :class:`~jaxrel.relevance.Table`
  per order with a frame column;
* the per-frame accounting: energy E = species shifts + Σ walk relevances + conservation
  error (what biases and rule stabilisers absorb), Σ walk relevances = Σ listed n-body terms
  + higher-order residual (the orders above ``max_order``), and the seconds spent;
* the model's atomwise energies E_i of the same frames;
* the geometry (positions, species, cell) and the run's metadata (model config, rule,
  jaxrel version, model and data paths).

Folder layout (file names and keys as written since jaxrel 0.1.0, so older folders load)::

    nbody.npz     order{n}_frame, order{n}_atoms, order{n}_species, order{n}_relevance,
                  order{n}_distances, order3_angles (see Table); positions (n_frames, n_atoms, 3) Å,
                  species (n_atoms,), frame_index (n_frames,), cell (n_frames, 3, 3) Å if periodic,
                  atomwise_energy (n_frames, n_atoms) eV (format 2 on); optional: order{n}_forces (m, n, 3)
                  eV/Å per-term forces and forces (n_frames, n_atoms, 3) eV/Å the model's forces (MBE);
                  order{n}_spread (m,) eV the terms' spread over an ensemble of seeds (ensemble_mean)
    summary.json  model, data, rule, epsilon, gamma, max_order, units, notes, frames: [{frame,
                  energy_eV, sum_relevance_eV, species_shift_eV, conservation_error_eV,
                  higher_order_residual_eV, body_order_totals_eV, n_terms, seconds}],
                  format, jaxrel_version, model_config (format 2 on)
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import jax
import numpy as np

from jaxrel.files import savez, write_json
from jaxrel.graph import Graph, build_graphs
from jaxrel.nn import RuleSet, resolve_rules
from jaxrel.relevance.nbody import check_max_order, nbody_decompositions
from jaxrel.relevance.table import COLUMNS, Table, frame_positions
from jaxrel.version import __version__

FORMAT = 2
"""Folder format written by :meth:`Explanation.save`: 1 = jaxrel 0.1.0 before atomwise
energies and metadata were stored (still loads; ``atomwise_energy`` is then None)."""

FILES = ("nbody.npz", "summary.json")
"""What :meth:`Explanation.save` writes into its folder."""

NOTES = {"sum_relevance_eV": "Σ of all walk relevances = unmasked gradient × input (+ the fixed prior's "
                             "pair energies for a model with a prior: its exact 2-body relevance)",
         "conservation_error_eV": "energy − species shifts − Σ relevance: relevance absorbed by "
                                  "biases and rule stabilisers",
         "higher_order_residual_eV": "Σ relevance − Σ listed n-body terms: terms of body order "
                                     "above max_order"}


@dataclass(frozen=True)
class Explanation:
    """Exact n-body relevance of frames with its accounting, geometry and metadata.

    Fields (n_frames F, atoms N)::

        tables                 {n: Table}                 | body order n → its terms over all frames
        frames                 (F,) int                   | frame numbers (index into the source data)
        energy                 (F,) float64               | eV, the model's energy
        species_shift          (F,) float64               | eV, Σ of the fixed per-species shifts
        sum_relevance          (F,) float64               | eV, Σ of all walk relevances
        higher_order_residual  (F,) float64               | eV, Σ relevance − Σ listed terms
        seconds                (F,) float64               | s, wall time of each frame's decomposition
        positions              (F, N, 3) float64          | Å
        species                (N,) int                   | atomic numbers (CG bead ids)
        cell                   (F, 3, 3) float64 or None  | Å, rows are cell vectors; None = free space
        atomwise_energy        (F, N) float64 or None     | eV, the model's E_i (None: format-1 folder)
        metadata               dict                       | method ("gnn-lrp" or "mbe"), rule, epsilon,
                                                            gamma, max_order, model, data, model_config,
                                                            jaxrel_version
        forces                 (F, N, 3) float64 or None  | eV/Å, the model's forces (decompositions
                                                            with per-term forces: the MBE)
    """

    tables: dict[int, Table]
    frames: np.ndarray
    energy: np.ndarray
    species_shift: np.ndarray
    sum_relevance: np.ndarray
    higher_order_residual: np.ndarray
    seconds: np.ndarray
    positions: np.ndarray
    species: np.ndarray
    cell: np.ndarray | None
    atomwise_energy: np.ndarray | None
    metadata: dict = field(default_factory=dict)
    forces: np.ndarray | None = None

    @property
    def method(self) -> str:
        """``"mbe"`` for the model's many-body expansion, else ``"gnn-lrp"``."""
        return self.metadata.get("method", "gnn-lrp")

    def body_order_forces(self) -> np.ndarray:
        """The force on each atom split by body order, F_i⁽ⁿ⁾ = Σ_{terms S ∋ i of order n} −∂ε(S)/∂x_i.

        Returns:
            (F, max_order, N, 3) float64, eV/Å; index n − 1 holds order n.
        Raises:
            ValueError: the tables carry no per-term forces (GNN-LRP relevance is not a
                function of positions; use :func:`jaxrel.relevance.many_body_expansion`
                with ``forces=True``).
        """
        if any(t.forces is None for t in self.tables.values()):
            raise ValueError("this explanation has no per-term forces: compute them with "
                             "many_body_expansion(..., forces=True) (jaxrel audit --forces)")
        out = np.zeros((len(self.frames), self.max_order, self.n_atoms, 3))
        for n, table in self.tables.items():
            rows = np.repeat(self.frame_rows(table.frame), n)
            np.add.at(out[:, n - 1], (rows, table.atoms.reshape(-1)), table.forces.reshape(-1, 3))
        return out

    @property
    def force_residual(self) -> np.ndarray:
        """The model's forces minus Σ of the body-order forces, (F, N, 3) eV/Å: the forces of
        the terms above ``max_order`` (ValueError as :meth:`body_order_forces`, or without forces)."""
        if self.forces is None:
            raise ValueError("this explanation stores no model forces: compute it with "
                             "many_body_expansion(..., forces=True)")
        return self.forces - self.body_order_forces().sum(axis=1)

    @property
    def conservation_error(self) -> np.ndarray:
        """E − species shifts − Σ relevance per frame, eV: what biases and stabilisers absorb
        (0 for GI rules on bias-free layers)."""
        return self.energy - self.species_shift - self.sum_relevance

    @property
    def max_order(self) -> int:
        """The highest body order explained."""
        return max(self.tables)

    @property
    def n_atoms(self) -> int:
        """Atoms per frame."""
        return len(self.species)

    def order_totals(self, n: int) -> np.ndarray:
        """Σ of the n-body terms of each frame, (F,) eV."""
        return self.tables[n].frame_sums(self.frames)

    def frame_rows(self, frame: np.ndarray) -> np.ndarray:
        """Position of each frame number in :attr:`frames`; ValueError if one is absent."""
        return frame_positions(frame, self.frames)

    def save(self, directory) -> Path:
        """Write ``nbody.npz`` and ``summary.json`` into ``directory`` (created).

        Returns:
            The folder as a Path.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {"positions": self.positions, "species": np.asarray(self.species),
                  "frame_index": np.asarray(self.frames)}
        if self.cell is not None:
            arrays["cell"] = self.cell
        for key in ("atomwise_energy", "forces"):
            if getattr(self, key) is not None:
                arrays[key] = getattr(self, key)
        for n, table in sorted(self.tables.items()):
            for key in COLUMNS:
                if getattr(table, key) is not None:
                    arrays[f"order{n}_{key}"] = getattr(table, key)
        savez(out / "nbody.npz", **arrays)
        totals = {n: self.order_totals(n) for n in self.tables}
        counts = {n: np.bincount(self.frame_rows(t.frame), minlength=len(self.frames))
                  for n, t in self.tables.items()}
        frames = [{"frame": int(f), "energy_eV": float(self.energy[k]),
                   "sum_relevance_eV": float(self.sum_relevance[k]),
                   "species_shift_eV": float(self.species_shift[k]),
                   "conservation_error_eV": float(self.conservation_error[k]),
                   "higher_order_residual_eV": float(self.higher_order_residual[k]),
                   "body_order_totals_eV": {str(n): float(totals[n][k]) for n in sorted(totals)},
                   "n_terms": {str(n): int(counts[n][k]) for n in sorted(counts)},
                   "seconds": float(self.seconds[k])} for k, f in enumerate(self.frames)]
        meta = dict(self.metadata)
        summary = {"model": meta.pop("model", None), "data": meta.pop("data", None),
                   "rule": meta.pop("rule", None), "epsilon": meta.pop("epsilon", None),
                   "gamma": meta.pop("gamma", None), "max_order": self.max_order,
                   "units": {"energy": "eV", "distance": "Å", "angle": "degree"}, "notes": NOTES,
                   "frames": frames, "format": FORMAT, **meta}
        write_json(out / "summary.json", summary)
        return out

    @classmethod
    def load(cls, directory) -> "Explanation":
        """Read a folder written by :meth:`save` (or by ``jaxrel explain``).

        Raises:
            FileNotFoundError: the folder or one of its two files is missing.
            ValueError: a file that is not a readable npz/JSON, a missing or misshapen table
                column, a folder of a format newer than this jaxrel reads or without frame
                geometry (jaxrel before 0.1.0), or tables and summary from different runs.
        """
        path = Path(directory)
        npz, summary_path = path / "nbody.npz", path / "summary.json"
        for file in (npz, summary_path):
            if not file.is_file():
                raise FileNotFoundError(f"{file} does not exist: run `jaxrel explain --out {path}` first")
        try:
            with np.load(npz, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{npz} is not a readable npz file ({err}): rerun jaxrel explain") from None
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{summary_path} is not valid JSON ({err}): rerun jaxrel explain") from None
        if not isinstance(summary, dict) or not isinstance(summary.get("frames"), list):
            raise ValueError(f"{summary_path} has no 'frames' list: rerun jaxrel explain")
        version = summary.get("format", 1)
        if version > FORMAT:
            raise ValueError(f"{path} is an explanation of format {version}, newer than the format {FORMAT} "
                             "this jaxrel reads: update jaxrel")
        missing = [k for k in ("positions", "species", "frame_index") if k not in arrays]
        if missing:
            raise ValueError(f"{npz} has no frame geometry ({', '.join(missing)}): it was written by a jaxrel "
                             "older than 0.1.0, which this version cannot read; rerun jaxrel explain")
        orders = sorted(int(m.group(1)) for key in arrays if (m := re.fullmatch(r"order(\d+)_frame", key)))
        tables = {}
        for n in orders:
            keys = [k for k in COLUMNS if k not in ("forces", "spread", "prior") and (k != "angles" or n == 3)]
            absent = [f"order{n}_{k}" for k in keys if f"order{n}_{k}" not in arrays]
            if absent:
                raise ValueError(f"{npz} lacks {', '.join(absent)}: rerun jaxrel explain")
            try:
                tables[n] = Table(**{k: arrays[f"order{n}_{k}"] for k in keys},
                                  forces=arrays.get(f"order{n}_forces"), spread=arrays.get(f"order{n}_spread"),
                                  prior=arrays.get(f"order{n}_prior"))
            except ValueError as err:
                raise ValueError(f"{npz}: {err}; rerun jaxrel explain") from None
        listed = summary["frames"]
        frames = np.array([f["frame"] for f in listed], np.int64)
        if not np.array_equal(frames, arrays["frame_index"]):
            raise ValueError(f"{npz} stores frames {arrays['frame_index'].tolist()} but summary.json lists "
                             f"{frames.tolist()}: the two files come from different runs, rerun jaxrel explain")

        def column(key):
            return np.array([f[key] for f in listed], np.float64)

        meta = {k: v for k, v in summary.items() if k not in ("frames", "units", "notes", "format", "max_order")}
        cell = arrays.get("cell")
        explanation = cls(tables=tables, frames=frames, energy=column("energy_eV"),
                          species_shift=column("species_shift_eV"), sum_relevance=column("sum_relevance_eV"),
                          higher_order_residual=column("higher_order_residual_eV"), seconds=column("seconds"),
                          positions=np.asarray(arrays["positions"], np.float64), species=arrays["species"],
                          cell=None if cell is None else np.asarray(cell, np.float64),
                          atomwise_energy=arrays.get("atomwise_energy"), metadata=meta,
                          forces=arrays.get("forces"))
        try:
            explanation._check_totals(listed)
        except ValueError as err:
            raise ValueError(f"{npz}: {err}") from None
        return explanation

    def _check_totals(self, listed: list[dict]) -> None:
        """The tables' per-frame sums agree with the totals summary.json lists."""
        for n, table in self.tables.items():
            totals = table.frame_sums(self.frames)
            scale = table.frame_sums(self.frames, absolute=True)
            expected = np.array([f.get("body_order_totals_eV", {}).get(str(n), 0.0) for f in listed])
            bad = np.flatnonzero(np.abs(totals - expected) > 1e-6 * scale + 1e-9)
            if len(bad):
                k = bad[0]
                raise ValueError(f"the {n}-body terms of frame {self.frames[k]} sum to {totals[k]:.6g} eV but "
                                 f"summary.json lists {expected[k]:.6g} eV: the two files come from different "
                                 "runs, rerun jaxrel explain")


def explain(potential, params, frames, *, max_order: int = 3, rules: RuleSet | str = "gi",
            chunk_size: int | None = 256, frame_index=None, model_path=None, data_path=None,
            progress: bool = False, mesh=None) -> Explanation:
    """Explain frames by their exact 1- to ``max_order``-body GNN-LRP relevance terms.

    For each frame: every walk's relevance from the chain of per-step Jacobian blocks, summed
    per atom set into exact n-body terms (:func:`~jaxrel.relevance.nbody.nbody_decompositions`:
    frames of one size class in one vmapped call, spread over devices), and the accounting
    E = species shifts + Σ relevance + conservation error.

    Args:
        potential, params: the model (e.g. from :func:`jaxrel.checkpoint.load_checkpoint`).
        frames: a :class:`jaxrel.data.Frames` (as :func:`jaxrel.data.read_frames` returns;
            graphs are built at the model's cutoff) or a :class:`~jaxrel.graph.Graph` of one
            or many frames of one system (the same real atoms in every frame, padding last).
        max_order: highest body order, 1 ≤ max_order ≤ n_interactions + 1.
        rules: a :class:`~jaxrel.nn.RuleSet` or its name (``"gi"``, ``"lrp-eps"``, ``"lrp-gamma"``).
        chunk_size: walk steps per chunk of the block product (bounds memory); None = all at once.
        frame_index: (F,) int frame numbers recorded in the tables (default 0..F−1), e.g. the
            indices of the selected frames in the data file.
        model_path, data_path: recorded in the metadata (the report finds ground truth
            through ``data_path``).
        progress: a progress bar over compiled calls.
        mesh: a one-axis device mesh to split the frames over (:func:`jaxrel.parallel.batch_mesh`);
            None = every local device of every process.

    Returns:
        :class:`Explanation`.
    Raises:
        ValueError: max_order outside 1..n_interactions + 1, an unknown rule, species the
            model was not trained on, bad positions or cells (as
            :func:`jaxrel.graph.build_graphs`), frames with different atoms, a
            ``frame_index`` of the wrong length, or a model without message-passing layers
            (the body-ordered model: explain it with its many-body expansion).
    """
    if not potential.has_layers:
        raise ValueError(f"the {potential.config.model} model has no message-passing layers for GNN-LRP; "
                         "explain it with its many-body expansion (jaxrel audit, "
                         "jaxrel.relevance.many_body_expansion)")
    check_max_order(potential, max_order)
    rules = resolve_rules(rules)
    graph, positions, species, cell = _graph_and_geometry(potential, frames)
    n_frames = graph.positions.shape[0]
    index = np.arange(n_frames) if frame_index is None else np.asarray(frame_index, np.int64).reshape(-1)
    if len(index) != n_frames:
        raise ValueError(f"frame_index has {len(index)} entries for {n_frames} frames: give one number per frame")
    results = nbody_decompositions(potential, params, graph, max_order, rules, chunk_size, frames=index,
                                   mesh=mesh, progress=progress)
    atomwise = np.asarray(_atomwise_energy(potential, params, graph), np.float64)[:, :len(species)]
    shift_total = potential.shift_total(params, species)
    tables = with_prior(potential, params, {n: Table.concatenate([r.orders[n] for r in results])
                                            for n in range(1, max_order + 1)}, add=True)
    prior = np.asarray(_prior_energy(potential, params, graph), np.float64)
    metadata = {"method": "gnn-lrp", "model": None if model_path is None else str(model_path),
                "data": None if data_path is None else str(data_path), "molecule": getattr(frames, "name", None),
                "rule": rules.name,
                "epsilon": rules.epsilon, "gamma": rules.gamma if not isinstance(rules.gamma, tuple) else list(rules.gamma),
                "model_config": potential.config.to_dict(), "jaxrel_version": __version__}
    return Explanation(
        tables=tables, frames=index, energy=np.array([r.energy for r in results]),
        species_shift=np.full(n_frames, shift_total), sum_relevance=np.array([r.total for r in results]) + prior,
        higher_order_residual=np.array([r.residual for r in results]),
        seconds=np.array([r.seconds for r in results]), positions=positions,
        species=species, cell=cell, atomwise_energy=atomwise, metadata=metadata)


def with_prior(potential, params, tables: dict[int, Table], add: bool) -> dict[int, Table]:
    """The tables with the ``prior`` column of the 2-body table set to the model's exact prior pair
    energies (:meth:`~jaxrel.models.Potential.prior_pair_energy`); unchanged for a model without a
    prior or without 2-body terms. ``add`` adds the prior to the 2-body relevance too (GNN-LRP:
    walks never see the fixed prior; the MBE's terms already hold it)."""
    if potential.config.prior is None or 2 not in tables:
        return tables
    pairs = tables[2]
    return {**tables, 2: pairs.with_prior(potential.prior_pair_energy(params, pairs.distances[:, 0], pairs.species),
                                          add)}


@partial(jax.jit, static_argnames="potential")
def _prior_energy(potential, params, graph: Graph) -> jax.Array:
    """The prior's energy (F,) eV of every frame (zeros without a prior)."""
    return potential.prior_energy(params, graph)


@partial(jax.jit, static_argnames="potential")
def _atomwise_energy(potential, params, graph: Graph) -> jax.Array:
    """The model's atomwise energies (F, n_atoms) eV, compiled once per model and size class."""
    return potential.atomwise_energy(params, graph)


def _graph_and_geometry(potential, frames):
    """(batched graph in the model's dtype, positions (F, N, 3), species (N,), cell (F, 3, 3) or None)."""
    if isinstance(frames, Graph):
        graph = frames if frames.is_batched else jax.tree.map(lambda x: x[None], frames)
        potential.check_graph(graph)
        mask = np.asarray(graph.node_mask)
        n_real = int(mask[0].sum())
        species = np.asarray(graph.species)
        if not (mask[:, :n_real].all() and not mask[:, n_real:].any() and (species == species[:1]).all()):
            raise ValueError("the graph's frames hold different atoms: explain one system (the same real "
                             "atoms, padding last) per call")
        positions = np.asarray(graph.positions, np.float64)[:, :n_real]
        cell = None if graph.cell is None else np.broadcast_to(
            np.asarray(graph.cell, np.float64), (len(positions), 3, 3)).copy()
        return graph.astype(potential.config.dtype), positions, species[0, :n_real], cell
    potential.check_species(frames.species)
    graph = build_graphs(frames.positions, frames.species, potential.config.cutoff,
                         cell=frames.cell).astype(potential.config.dtype)
    cell = None if frames.cell is None else np.broadcast_to(frames.cell, (len(frames), 3, 3)).copy()
    return graph, np.asarray(frames.positions, np.float64), np.asarray(frames.species), cell


def ensemble_mean(explanations: list[Explanation], seeds: list[int]) -> Explanation:
    """The mean explanation of an ensemble of seeds, with each term's spread over the seeds.

    Every member must explain the same frames with the same sets of atoms (models of one
    configuration at one cutoff do). Tables hold the mean term (``relevance``) and its
    standard deviation over the seeds (``spread``, ddof = 1; 0 for one seed); per-term
    forces are averaged. The per-frame accounting, atomwise energies and model forces are
    means; ``metadata["seeds"]`` lists the seeds and ``metadata["seed_order_totals_eV"]``
    {n: (K, F) nested lists} the members' per-frame totals of each body order.

    Raises:
        ValueError: no members, a seed count that differs from the members, or members that
            explain different frames or different sets of atoms.
    """
    if not explanations or len(explanations) != len(seeds):
        raise ValueError(f"{len(explanations)} explanations for {len(seeds)} seeds: give one explanation per seed")
    first = explanations[0]
    for seed, e in zip(seeds[1:], explanations[1:]):
        same = np.array_equal(e.frames, first.frames) and e.tables.keys() == first.tables.keys() and all(
            np.array_equal(e.tables[n].atoms, t.atoms) and np.array_equal(e.tables[n].frame, t.frame)
            for n, t in first.tables.items())
        if not same:
            raise ValueError(f"the member of seed {seed} explains other frames or atom sets than the member of "
                             f"seed {seeds[0]}: explain one set of frames with models of one configuration")

    def mean(key):
        values = [getattr(e, key) for e in explanations]
        return None if any(v is None for v in values) else np.mean(values, axis=0)

    tables = {}
    for n, table in first.tables.items():
        stack = np.stack([e.tables[n].relevance for e in explanations])
        forces = [e.tables[n].forces for e in explanations]
        tables[n] = replace(table, relevance=stack.mean(axis=0),
                            spread=stack.std(axis=0, ddof=1) if len(stack) > 1 else np.zeros(len(table)),
                            forces=None if any(f is None for f in forces) else np.mean(forces, axis=0))
    metadata = {**first.metadata, "seeds": list(map(int, seeds)),
                "seed_order_totals_eV": {str(n): [e.order_totals(n).tolist() for e in explanations]
                                         for n in first.tables}}
    return replace(first, tables=tables, energy=mean("energy"), species_shift=mean("species_shift"),
                   sum_relevance=mean("sum_relevance"), higher_order_residual=mean("higher_order_residual"),
                   seconds=np.sum([e.seconds for e in explanations], axis=0),
                   atomwise_energy=mean("atomwise_energy"), forces=mean("forces"), metadata=metadata)
