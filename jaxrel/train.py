"""Training (optax) and evaluation of potentials, and :func:`train_potential`, the library
form of ``jaxrel train`` (data file in, checkpoint and ``metrics.json`` out).

Loss: w_E · mean((ΔE / n_atoms)²) + w_F · mean(ΔF²) with E in eV and F in eV/Å
(energy weight 0 is force matching, for coarse-grained data). Adam/AdamW with gradient
clipping, a learning rate decaying exponentially with training progress, an exponential
moving average (EMA) of the parameters, and the EMA parameters with the lowest
validation loss kept as the best checkpoint.

Batches are split over devices (:mod:`jaxrel.parallel`): the frames of an evaluation batch
and of a training batch over a one-axis mesh, the parameters replicated; padded frames are
dropped or weigh 0, so a run on several devices, or several processes, equals a one-device run
up to rounding.

Checkpoints are written and read by :mod:`jaxrel.checkpoint`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxrel.checkpoint import checkpoint_digest, save_checkpoint, save_ensemble
from jaxrel.files import prepare_output, write_json
from jaxrel.graph import Graph, build_graphs, concatenate_graphs
from jaxrel.models import ModelConfig, Potential
from jaxrel.models.potential import SpeciesShift
from jaxrel.models.prior import fit_repulsive_prior
from jaxrel.parallel import batch_mesh, constrain_leading, gather, pad_leading, padded_size, replicate, shard_leading

FILES = ("model", "model_seed*", "metrics.json", "ensemble.json")
"""What :func:`train_potential` writes into its output folder."""


class Targets(NamedTuple):
    """Reference labels for a batched graph.

    energies: (n_frames,) eV, or None (force matching).
    forces: (n_frames, n_atoms, 3) eV/Å (zero rows for padded atoms), or None.
    properties: the label of a gap model, (n_frames,) eV, or of a dipole model, (n_frames, 3) e·Å;
    None for energy models.
    """

    energies: jax.Array | None
    forces: jax.Array | None
    properties: jax.Array | None = None


PROPERTY_LABELS = {"gap": ("gaps", "eV", 1.0), "dipole": ("dipoles", "D", 1.0 / 0.2081943)}
"""target → (the :class:`~jaxrel.data.Frames` field holding its label, the unit errors are reported
in, the factor from the label's unit (eV; e·Å) to it: 1 e·Å = 4.80321 D, from 1 D = 0.2081943 e·Å)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: number of passes over the training frames (or None with ``minutes``).
        minutes: wall-clock budget; training stops after the epoch that exceeds it.
        batch_size: frames per step (the last incomplete batch of an epoch is dropped;
            frames are reshuffled every epoch).
        learning_rate, final_learning_rate: exponential decay between the two with progress.
        weight_decay: AdamW decoupled weight decay (0 gives Adam).
        energy_weight, forces_weight: loss weights w_E (per-atom energy, eV²) and w_F (eV²/Å²).
        ema_decay: EMA factor per step, warmed up as min(decay, (1+n)/(10+n)) (0 disables it).
        clip_norm: global gradient-norm clip.
        seed: shuffling seed.
    """

    epochs: int | None = None
    minutes: float | None = None
    batch_size: int = 16
    learning_rate: float = 1e-3
    final_learning_rate: float = 2e-5
    weight_decay: float = 0.0
    energy_weight: float = 0.05
    forces_weight: float = 0.95
    ema_decay: float = 0.99
    clip_norm: float = 10.0
    seed: int = 0

    def __post_init__(self):
        if (self.epochs is None) == (self.minutes is None):
            raise ValueError("give exactly one of epochs (--epochs) or minutes (--minutes) to stop training")
        checks = (("epochs", "--epochs", self.epochs is None or (int(self.epochs) == self.epochs and self.epochs >= 1),
                   "a whole number of at least 1"),
                  ("minutes", "--minutes", self.minutes is None or (math.isfinite(self.minutes) and self.minutes > 0),
                   "a positive number"),
                  ("batch_size", "--batch-size", int(self.batch_size) == self.batch_size and self.batch_size >= 1,
                   "a whole number of at least 1"),
                  ("learning_rate", "--lr", math.isfinite(self.learning_rate) and self.learning_rate > 0,
                   "a positive number, e.g. 1e-3"),
                  ("final_learning_rate", None, math.isfinite(self.final_learning_rate) and self.final_learning_rate > 0,
                   "a positive number, e.g. 2e-5"),
                  ("weight_decay", None, math.isfinite(self.weight_decay) and self.weight_decay >= 0, "0 or more"),
                  ("energy_weight", "--energy-weight", math.isfinite(self.energy_weight) and self.energy_weight >= 0,
                   "0 or more (0: force matching)"),
                  ("forces_weight", "--forces-weight", math.isfinite(self.forces_weight) and self.forces_weight >= 0,
                   "0 or more"),
                  ("ema_decay", None, 0 <= self.ema_decay < 1, "in [0, 1) (0: no averaging)"),
                  ("clip_norm", None, math.isfinite(self.clip_norm) and self.clip_norm > 0, "a positive number"))
        for name, option, ok, need in checks:
            if not ok:
                label = f"{name} ({option})" if option else name
                raise ValueError(f"{label} is {getattr(self, name)}; it must be {need}")
        if self.energy_weight == 0 and self.forces_weight == 0:
            raise ValueError("both loss weights (--energy-weight and --forces-weight) are 0, so there is nothing "
                             "to fit; make at least one positive")


def _batch(graph: Graph, targets: Targets, idx: jax.Array) -> tuple[Graph, Targets]:
    take = lambda x: None if x is None else jnp.take(x, idx, axis=0)  # noqa: E731
    return jax.tree.map(take, graph), Targets(*(take(t) for t in targets))


def _losses(potential: Potential, params, graph: Graph, targets: Targets, weight: jax.Array):
    """Weighted per-frame squared errors: (energy term, forces term), each a scalar mean.

    A gap or dipole model has one term, the property's squared error per frame (summed over the
    dipole's components; intensive, so not divided by the atom count), returned as the first.
    """
    if potential.config.target != "energy":
        error = (potential.predict(params, graph) - targets.properties) ** 2
        error = error.reshape(error.shape[0], -1).sum(-1)
        return jnp.sum(weight * error) / jnp.maximum(weight.sum(), 1.0), jnp.zeros((), error.dtype)
    energy, forces = potential.energy_and_forces(params, graph)
    n_real = graph.node_mask.sum(-1)
    total = jnp.maximum(weight.sum(), 1.0)
    e_loss = f_loss = jnp.zeros((), energy.dtype)
    if targets.energies is not None:
        e_loss = jnp.sum(weight * ((energy - targets.energies) / n_real) ** 2) / total
    if targets.forces is not None:
        sq = jnp.sum((forces - targets.forces) ** 2, axis=-1) * graph.node_mask
        f_loss = jnp.sum(weight * sq.sum(-1) / (3 * n_real)) / total
    return e_loss, f_loss


def _index_batches(n: int, batch_size: int, rng: np.random.Generator | None, size: int | None = None):
    """Index batches of ``batch_size`` frames, shuffled with the last incomplete one dropped (``rng``)
    or in order with the last one short (None), each padded to ``size`` (default ``batch_size``)
    indices by repeating its last with weight 0: ``(indices (size,), weights (size,))``, one compiled
    shape, a multiple of the device count."""
    size = batch_size if size is None else size
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n - n % batch_size if rng is not None else n, batch_size):
        idx = order[start:start + batch_size]
        w = np.zeros(size)
        w[:len(idx)] = 1.0
        yield np.concatenate([idx, np.full(size - len(idx), idx[-1])]), w


def predict_frames(potential: Potential, params, graph: Graph, batch_size: int = 64,
                   mesh: Mesh | None = None):
    """A potential's predictions for every frame of a batched graph, the frames split over devices.

    Batches of ``batch_size`` frames, rounded up to a multiple of the device count, are split
    over ``mesh`` (:func:`jaxrel.parallel.shard_leading`, params replicated); the last batch is
    padded with copies of its last frame, whose results are dropped. The predictions equal a
    one-device run up to rounding, and every process of a multi-process run gets all of them.

    Args:
        graph: batched graph (n_frames leading axis), one size class.
        batch_size: frames per compiled call, at least 1 (rounded up as above).
        mesh: :func:`jaxrel.parallel.batch_mesh`; None = every device of every process.
    Returns:
        NumPy arrays: for an energy model ``(energies (n_frames,) eV, forces (n_frames, n_atoms, 3)
        eV/Å)`` (zero rows for padded atoms); for a gap model (n_frames,) eV, for a dipole model
        (n_frames, 3) e·Å.
    Raises:
        ValueError: a graph without frames or ``batch_size`` < 1.
    """
    n = graph.positions.shape[0]
    if n == 0 or batch_size < 1:
        raise ValueError(f"cannot predict {n} frames in batches of {batch_size}; give at least one frame and "
                         "a batch size of at least 1")
    mesh = batch_mesh() if mesh is None else mesh
    size = padded_size(min(batch_size, n), mesh)
    host = jax.device_get(graph)
    params = replicate(params, mesh)
    compute = _energy_and_forces if potential.config.target == "energy" else _predict
    parts = []
    for start in range(0, n, size):
        batch = pad_leading(jax.tree.map(lambda x: x[start:start + size], host), size)
        out = gather(compute(potential, params, shard_leading(batch, mesh)))
        parts.append(jax.tree.map(lambda x: x[:n - start], out))
    return jax.tree.map(lambda *x: np.concatenate(x), *parts)


def evaluate(potential: Potential, params, graph: Graph, targets: Targets,
             batch_size: int = 64, mesh: Mesh | None = None) -> dict:
    """Mean absolute errors of a potential on labelled frames.

    Args:
        graph: batched graph (n_frames leading axis).
        targets: reference energies (eV) and/or forces (eV/Å).
        batch_size, mesh: frames per compiled call and the devices they are split over
            (:func:`predict_frames`; None = every device of every process); the result does
            not depend on them beyond rounding.
    Returns:
        ``{"energy_mae_meV", "forces_mae_meV_per_A", "energy_rmse_meV",
        "forces_rmse_meV_per_A", "forces_reference_rms_meV_per_A", "n_frames"}``; energy
        entries are None without reference energies (per-frame total energies, meV);
        forces per Cartesian component; the reference RMS sets the scale of the force errors.
        A gap model gives ``{"gap_mae_eV", "gap_rmse_eV", "gap_reference_std_eV", "n_frames"}``
        and a dipole model the same keys with ``dipole_…_D`` (Debye): the error of a frame is
        ‖μ − μ_ref‖, and the reference spread is √(Σ_k var μ_k).

    Raises:
        ValueError: as :func:`predict_frames`.
    """
    n = graph.positions.shape[0]
    if potential.config.target != "energy":
        return _evaluate_property(potential, params, graph, targets, batch_size, mesh)
    energy, forces = predict_frames(potential, params, graph, batch_size, mesh)
    mask = np.asarray(graph.node_mask)
    e_err = None if targets.energies is None else energy - np.asarray(targets.energies)
    f_err = None if targets.forces is None else (forces - np.asarray(targets.forces))[mask].ravel()
    out = {"n_frames": int(n), "forces_reference_rms_meV_per_A": None if targets.forces is None else
           float(1000 * np.sqrt(np.sum(np.asarray(targets.forces) ** 2) / (3 * mask.sum())))}
    for key, err, unit in (("energy", e_err, "meV"), ("forces", f_err, "meV_per_A")):
        out[f"{key}_mae_{unit}"] = None if err is None else float(1000 * np.abs(err).mean())
        out[f"{key}_rmse_{unit}"] = None if err is None else float(1000 * np.sqrt((err ** 2).mean()))
    return out


@partial(jax.jit, static_argnames="potential")
def _energy_and_forces(potential: Potential, params, graph: Graph):
    """One compiled energy + forces per model and size class, shared by every :func:`evaluate` call."""
    return potential.energy_and_forces(params, graph)


@partial(jax.jit, static_argnames="potential")
def _predict(potential: Potential, params, graph: Graph):
    """One compiled prediction per model and size class (gap and dipole models)."""
    return potential.predict(params, graph)


def _evaluate_property(potential: Potential, params, graph: Graph, targets: Targets, batch_size: int,
                       mesh: Mesh | None) -> dict:
    """:func:`evaluate` of a gap or dipole model (keys in its docstring)."""
    n = graph.positions.shape[0]
    predicted = predict_frames(potential, params, graph, batch_size, mesh)
    err = np.asarray(predicted - np.asarray(targets.properties), np.float64).reshape(n, -1)
    target = potential.config.target
    _, unit, factor = PROPERTY_LABELS[target]
    size = np.linalg.norm(err, axis=-1) * factor
    reference = np.asarray(targets.properties, np.float64).reshape(n, -1) * factor
    return {"n_frames": int(n), f"{target}_mae_{unit}": float(size.mean()),
            f"{target}_rmse_{unit}": float(np.sqrt(np.mean(size ** 2))),
            f"{target}_reference_std_{unit}": float(np.sqrt(np.sum(reference.var(axis=0))))}


def train(potential: Potential, params, train_data: tuple[Graph, Targets],
          validation_data: tuple[Graph, Targets], config: TrainConfig,
          checkpoint_dir: str | Path | list | None = None, progress: bool = True, mesh: Mesh | None = None):
    """Fit a potential's trainable parameters; return the best EMA params and a history.

    An ensemble (``params`` a list, one initialisation per seed) is trained in one vmapped
    run: every member sees the same batches in the same order, so members differ only by
    their initialisation; each keeps its own optimiser state, EMA and best epoch.

    Data parallel: the training and validation sets and the parameters are replicated on
    every device of ``mesh``, and each step's batch is split over its devices along the frame
    axis (the member axis of an ensemble is not split). A batch is padded to a multiple of the
    device count with frames of weight 0, so the trained params equal a one-device run up to
    rounding. In a run of several processes (:func:`jaxrel.parallel.initialize`) every process
    calls this with the same data, only process 0 writes checkpoints, and with ``minutes``
    every process stops after the epoch process 0 chooses.

    Args:
        potential: the model; params: from :meth:`Potential.create` (per-species shifts
            and scale stay fixed and must be the same for every member), or a list of them.
        train_data, validation_data: (batched graph, targets); every frame must share one
            size class (capacities).
        config: optimisation settings.
        checkpoint_dir: if given, the best params are saved there whenever the validation
            loss improves (for an ensemble, a list with one folder per member).
        progress: show a progress bar with live losses.
        mesh: devices each batch is split over (:func:`jaxrel.parallel.batch_mesh`); None = every
            device of every process.

    Returns:
        ``(best_params, history)``, or for a list of params ``([best_params], [history])``;
        a history has per-epoch ``train_loss``, ``validation_loss``, ``learning_rate``, and
        ``seconds``, ``steps``, ``frames_per_second``, ``best_epoch``, ``best_validation_loss``.

    Raises:
        ValueError: fewer training frames than one batch, no validation frames, or members
            with different fixed shifts.
    """
    graph, targets = train_data
    n_train = graph.positions.shape[0]
    if n_train < config.batch_size:
        raise ValueError(f"{n_train} training frames are fewer than one batch of {config.batch_size}; "
                         "lower --batch-size or add frames")
    if validation_data[0].positions.shape[0] == 0:
        raise ValueError("the validation set is empty; give at least one validation frame")
    members = list(params) if isinstance(params, (list, tuple)) else [params]
    k_members = len(members)
    parts = [nnx.split_state(p, nnx.Param, SpeciesShift) for p in members]
    for _, other in parts[1:]:
        if not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(parts[0][1]))):
            raise ValueError("ensemble members must share their species shifts and energy scale")
    mesh = batch_mesh() if mesh is None else mesh
    graph, targets = replicate(train_data, mesh)
    constants = replicate(parts[0][1], mesh)
    trainable = replicate(jax.tree.map(lambda *x: np.stack(x), *[p for p, _ in parts]), mesh)   # member axis
    optimizer = optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.inject_hyperparams(optax.adamw)(learning_rate=config.learning_rate,
                                              weight_decay=config.weight_decay))
    opt_state = replicate(jax.jit(jax.vmap(optimizer.init))(trainable), mesh)
    w_e, w_f = config.energy_weight, config.forces_weight

    def loss_fn(p, g, t, weight):
        e_loss, f_loss = _losses(potential, (p, constants), g, t, weight)
        return w_e * e_loss + w_f * f_loss

    def member_step(p, ema, opt_state, lr, g, t, weight):
        loss, grads = jax.value_and_grad(loss_fn)(p, g, t, weight)
        opt_state[1].hyperparams["learning_rate"] = lr
        updates, opt_state = optimizer.update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
        # EMA with the usual warm-up (decay ≤ (1 + n)/(10 + n)) so early averages do not
        # keep the random initialisation.
        n = opt_state[1].count.astype(jnp.float32)
        d = jnp.minimum(config.ema_decay, (1.0 + n) / (10.0 + n))
        ema = jax.tree.map(lambda e, q: d * e + (1 - d) * q, ema, p)
        return p, ema, opt_state, loss

    def split_batch(graph, targets, idx, weight):
        """The batch's frames and weights, gathered from the replicated data and split over the mesh."""
        return constrain_leading((*_batch(graph, targets, idx), weight), mesh)

    @jax.jit
    def step(p, ema, opt_state, lr, idx, weight, graph, targets):
        g, t, weight = split_batch(graph, targets, idx, weight)
        return jax.vmap(member_step, in_axes=(0, 0, 0, None, None, None, None))(p, ema, opt_state, lr, g, t, weight)

    val_graph, val_targets = replicate(validation_data, mesh)

    @jax.jit
    def val_loss(p, idx, weight, val_graph, val_targets):
        g, t, weight = split_batch(val_graph, val_targets, idx, weight)
        return jax.vmap(lambda q: loss_fn(q, g, t, weight) * weight.sum())(p)

    def batches(n: int, batch_size: int, rng: np.random.Generator | None):
        """Index batches padded to a multiple of the device count, with weights, on every device."""
        dtype = graph.positions.dtype
        for idx, w in _index_batches(n, batch_size, rng, padded_size(batch_size, mesh)):
            yield replicate((idx.astype(np.int32), np.asarray(w, dtype)), mesh)

    def validation(p):
        n = val_graph.positions.shape[0]
        total = sum(gather(val_loss(p, idx, w, val_graph, val_targets)).astype(np.float64)
                    for idx, w in batches(n, min(config.batch_size, n), None))
        return total / n

    @jax.jit
    def keep_improved(improved, best, ema):
        return jax.tree.map(lambda b, e: jnp.where(improved.reshape((-1,) + (1,) * (e.ndim - 1)), e, b), best, ema)

    def member(tree, k):
        """Member ``k``'s params (trainable and fixed), off the mesh on JAX's default device."""
        return jax.device_put(nnx.merge_state(jax.tree.map(lambda x: x[k], gather(tree)), gather(constants)))

    dirs = (checkpoint_dir if isinstance(checkpoint_dir, (list, tuple)) else [checkpoint_dir]
            if checkpoint_dir is not None else [None] * k_members)
    rng = np.random.default_rng(config.seed)
    ema, best = trainable, trainable
    best_loss, best_epoch = np.full(k_members, math.inf), np.zeros(k_members, int)
    history = [{"train_loss": [], "validation_loss": [], "learning_rate": []} for _ in range(k_members)]
    start, steps, epoch = time.perf_counter(), 0, 0
    bar = tqdm(total=config.epochs if config.epochs else None, disable=not progress,
               desc=f"train {potential.config.model}" + (f" × {k_members} seeds" if k_members > 1 else ""),
               unit="epoch")
    interrupted = False
    try:
        while True:
            elapsed = time.perf_counter() - start
            if config.minutes and jax.process_count() > 1:     # every process stops after the same epoch
                elapsed = float(multihost_utils.broadcast_one_to_all(np.float64(elapsed)))
            frac = (epoch / config.epochs) if config.epochs else elapsed / (60 * config.minutes)
            if frac >= 1.0:
                break
            lr = config.learning_rate * (config.final_learning_rate / config.learning_rate) ** frac
            losses = []
            for idx, w in batches(n_train, config.batch_size, rng):
                trainable, ema, opt_state, loss = step(trainable, ema, opt_state, lr, idx, w, graph, targets)
                losses.append(loss)
                steps += 1
            epoch += 1
            train_loss = np.mean(np.asarray(gather(losses), np.float64), axis=0)
            current = validation(ema)
            for k in range(k_members):
                for key, value in (("train_loss", float(train_loss[k])), ("validation_loss", float(current[k])),
                                   ("learning_rate", lr)):
                    history[k][key].append(value)
            if not (np.all(np.isfinite(train_loss)) and np.all(np.isfinite(current))):
                raise FloatingPointError(f"training diverged at epoch {epoch} (training loss {train_loss.max()}, "
                                         f"validation loss {current.max()}); lower --lr or check the data "
                                         "for outliers")
            improved = current < best_loss
            if improved.any():
                best = keep_improved(replicate(improved, mesh), best, ema)
                best_loss, best_epoch = np.where(improved, current, best_loss), np.where(improved, epoch, best_epoch)
                for k in np.flatnonzero(improved):
                    if dirs[k] is not None and jax.process_index() == 0:
                        save_checkpoint(dirs[k], potential, member(best, k))
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss.max():.3g}", val=f"{current.max():.3g}", best=f"{best_loss.max():.3g}",
                            lr=f"{lr:.1e}")
    except KeyboardInterrupt:     # Ctrl-C: keep the best of the finished epochs
        interrupted = True
    bar.close()
    seconds = time.perf_counter() - start
    if interrupted and not (best_epoch > 0).all():
        raise KeyboardInterrupt("training was interrupted before its first epoch finished; nothing was saved")
    for k in range(k_members):
        history[k].update(seconds=seconds, steps=steps, epochs=epoch, interrupted=interrupted,
                          best_epoch=int(best_epoch[k]),
                          best_validation_loss=float(best_loss[k]),
                          frames_per_second=steps * config.batch_size / seconds)
    bests = [member(best, k) for k in range(k_members)]
    return (bests, history) if isinstance(params, (list, tuple)) else (bests[0], history[0])


def labelled_graphs(frames, cutoff: float, dtype: str = "float32",
                    n_edges: int | None = None, target: str = "energy") -> tuple[Graph, Targets]:
    """A batched graph and targets from :class:`jaxrel.data.readers.Frames`.

    Args:
        frames: one ``Frames`` (positions Å, energies eV, forces eV/Å, either may be None), or
            a list of them with different compositions (e.g. the molecules of
            :func:`jaxrel.data.read_molecules`): each is built alone and the frames concatenated
            in list order in one size class (:func:`jaxrel.graph.concatenate_graphs`).
        cutoff: neighbour cutoff, Å.
        dtype: float dtype of positions and targets (the model's dtype).
        n_edges: edge capacity (None: the largest edge count of these frames).
        target: ``"energy"``, or ``"gap"``/``"dipole"`` to put the frames' gaps (eV) or
            dipoles (e·Å) in ``Targets.properties``.
    Raises:
        ValueError: as :func:`jaxrel.graph.build_graphs`, when the frames have neither
            energies nor forces (energy target) or lack the target's label, or an empty list.
    """
    parts = [frames] if not isinstance(frames, (list, tuple)) else list(frames)
    if not parts:
        raise ValueError("no frames given: pass at least one Frames")
    label = PROPERTY_LABELS[target][0] if target != "energy" else None
    for f in parts:
        if label is None and f.energies is None and f.forces is None:
            raise ValueError(f"{f.source} has neither energies nor forces to train or evaluate on")
        if label is not None and getattr(f, label) is None:
            raise ValueError(f"{f.source} has no {label} for a {target} model; give data with {label} "
                             "(e.g. from 'jaxrel generate xtb')")
    graph = concatenate_graphs([build_graphs(f.positions, f.species, cutoff, cell=f.cell, n_edges=n_edges)
                                for f in parts])
    n_atoms = graph.n_atoms

    def stack(name, pad_atoms=False):
        values = [getattr(f, name) for f in parts]
        if any(v is None for v in values):
            return None
        if pad_atoms:
            values = [np.pad(v, [(0, 0), (0, n_atoms - v.shape[1]), (0, 0)]) for v in values]
        return jnp.asarray(np.concatenate(values), dtype)

    if label is not None:
        return graph.astype(dtype), Targets(None, None, stack(label))
    return graph.astype(dtype), Targets(stack("energies"), stack("forces", pad_atoms=True))


def training_split(n_frames: int, n_train: int | None = None, n_validation: int | None = None, seed: int = 0,
                   separate_test: bool = False):
    """The split :func:`train_potential` uses (:func:`jaxrel.data.split_frames` with its defaults):
    validation 5 % (at least 1) unless ``n_validation`` is given; training 80 % unless ``n_train`` is
    given, or all but validation when the test frames come from a separate file
    (``separate_test``, and the test split is then empty); test the rest.

    Raises:
        ValueError: as :func:`jaxrel.data.split_frames`.
    """
    from jaxrel.data import split_frames

    n_val = n_validation if n_validation is not None else max(1, round(0.05 * n_frames))
    if separate_test:
        return split_frames(n_frames, n_train if n_train is not None else n_frames - n_val, n_val, 0, seed=seed)
    return split_frames(n_frames, n_train if n_train is not None else round(0.8 * n_frames), n_val, None, seed=seed)


def select_frames(molecules: list, indices) -> list:
    """The frames of a list of :class:`~jaxrel.data.Frames` picked by global frame indices.

    Frame k of the list is frame k of the concatenation ``molecules[0], molecules[1], …``
    (the file's order for :func:`jaxrel.data.read_molecules`). Returns one ``Frames`` per molecule
    that has picked frames, in list order, each holding its picked frames in the order of ``indices``
    (for a single ``Frames`` this is ``frames.select(indices)``).
    """
    indices = np.asarray(indices, np.int64)
    starts = np.cumsum([0] + [len(f) for f in molecules])
    picked = []
    for f, start, stop in zip(molecules, starts[:-1], starts[1:]):
        local = indices[(indices >= start) & (indices < stop)] - start
        if len(local):
            picked.append(f.select(local))
    return picked


def _shifts_and_scale(frames: list, target: str, readout: str, fit: bool) -> tuple[dict[int, float], float]:
    """Per-species shifts e_Z and the output scale of a new model from its training frames.

    Energy: shifts a least-squares fit of the energies (``fit``; else 0), scale the force RMS
    (eV/Å × 1 Å) or, without forces, the spread of the per-atom energy residual. Gap: with the sum
    readout the same fit of the gaps; with ``mean``/``softmax`` one shared shift, the mean gap, and
    the gap's spread as scale. Dipole: no shifts; scale |μ|_rms / (Σ_i |r_i − r̄|²)_rms^½, the size of
    the charges that random signs would need (e).
    """
    from jaxrel.data import fit_species_energies

    species = sorted(set(np.concatenate([f.species for f in frames]).tolist()))
    if target == "dipole":
        mu = np.concatenate([f.dipoles for f in frames])
        spread = np.concatenate([np.sum((f.positions - f.positions.mean(1, keepdims=True)) ** 2, axis=(1, 2))
                                 for f in frames])
        return {}, max(float(np.sqrt(np.mean(np.sum(mu ** 2, -1)) / np.mean(spread))), 1e-3)
    label = "energies" if target == "energy" else PROPERTY_LABELS[target][0]
    values = [getattr(f, label) for f in frames]
    if target == "gap" and readout != "sum":
        gaps = np.concatenate(values)
        return {z: float(gaps.mean()) for z in species}, max(float(gaps.std()), 1e-3)
    shifts = fit_species_energies(frames, label=label) if fit and values[0] is not None else {}
    if target == "energy" and frames[0].forces is not None:
        forces = np.concatenate([f.forces.reshape(-1) for f in frames])
        return shifts, max(float(np.sqrt(np.mean(forces ** 2))), 1e-3)
    residual = np.concatenate([(v - sum(shifts.get(int(z), 0.0) for z in f.species)) / np.sqrt(len(f.species))
                               for f, v in zip(frames, values)])
    return shifts, max(float(np.std(residual)), 1e-3)


def train_potential(data, out, *, test_data=None, model: str = "schnet", cutoff: float = 5.0,
                    n_features: int | tuple[int, ...] = 64, n_interactions: int = 3, n_rbf: int = 20,
                    dtype: str = "float32", lmax: int | None = None, epochs: int | None = None,
                    minutes: float | None = None, batch_size: int = 8,
                    learning_rate: float = 1e-3, energy_weight: float = 0.05, forces_weight: float = 0.95,
                    species_energies: str = "fit", n_train: int | None = None, n_validation: int | None = None,
                    seed: int = 0, seeds: int = 1, prior: str | None = None, target: str = "energy",
                    readout: str = "sum", overwrite: bool = False, progress: bool = True,
                    mesh: Mesh | None = None) -> dict:
    """Train a potential on a data file and write ``OUT/model/`` and ``OUT/metrics.json``.

    Nothing is computed before the settings, the output folder and the data are checked.
    Every file is written atomically; during training ``OUT/model/`` holds the best model so
    far (without metrics), and ``metrics.json`` is written last, beside the final checkpoint
    it describes (both carry the checkpoint's ``params_sha256``). Ctrl-C ends training after
    the current step: the best model of the finished epochs is evaluated and saved with
    ``"interrupted": true`` in its training metrics.

    Frames are split deterministically (``seed``, :func:`training_split`): validation 5 % (at least 1) unless
    ``n_validation`` is given; training 80 % (or all but validation with ``test_data``);
    the test set is the rest, or ``test_data``. Per-species energy shifts are a least-squares
    fit to the training energies (``species_energies="fit"``) or zero (``"zero"``, e.g. for
    noble gases, whose isolated atoms have energy 0); the network's energy scale is the
    training forces' RMS (eV/Å × 1 Å) or, without forces, the per-atom energy spread.
    Without energies (force matching of coarse-grained data, ``energy_weight=0``) the shifts
    are 0: a CG energy is a free energy defined up to a constant, and jaxrel fixes that
    constant by having no per-bead offset, so the energy is the network's output (plus the
    prior); only energy differences and forces carry meaning.

    Args:
        data: a file :func:`jaxrel.data.read_molecules` reads (one system, or the molecules of a
            ``jaxrel generate xtb`` file: frames of different compositions are padded to one size
            class, :func:`labelled_graphs`, and split at random over all frames); test_data: an
            optional separate one.
        out: output folder (created).
        model, cutoff (Å), n_interactions, n_rbf, dtype, lmax: :class:`ModelConfig`.
        n_features: the feature width, or for NequIP the multiplicities (F_0, …, F_L) per l
            (one value: F_0 for every l up to ``lmax``).
        epochs or minutes, batch_size, learning_rate, energy_weight, forces_weight, seed:
            :class:`TrainConfig`.
        species_energies: ``"fit"`` or ``"zero"``.
        prior: ``"repulsive"`` adds the fixed pair prior of :mod:`jaxrel.models.prior`, fitted to
            the training frames' closest approaches and force RMS, to the network (it is part
            of the energy in training, MD and every explanation); None for none.
        target, readout: what the model predicts and how atomwise outputs combine
            (:class:`ModelConfig`). A gap or dipole model is trained on the squared error of
            that label alone (``energy_weight``/``forces_weight`` do not apply); its shifts and
            scale are set as in :func:`_shifts_and_scale`.
        n_train, n_validation: frame counts (None: the defaults above).
        seeds: ensemble size K. With K > 1 the models initialised with seeds seed … seed + K − 1
            are trained in one vmapped run on the same batches (:func:`train`) and saved as
            ``OUT/model_seed{s}/`` with ``OUT/ensemble.json`` (read by
            :func:`jaxrel.checkpoint.load_models`); ``metrics.json`` then has one entry per seed
            under ``"members"`` and the mean and standard deviation of the test errors.
        overwrite: replace an earlier run in ``out`` (its model folders, ``metrics.json`` and
            ``ensemble.json``) instead of refusing.
        progress: a progress bar with live losses.
        mesh: the devices batches are split over in training and evaluation
            (:func:`jaxrel.parallel.batch_mesh`; None = every device of every process). In a run of
            several processes (:func:`jaxrel.parallel.initialize`) every process calls this with the
            same arguments and process 0 alone writes ``out``; the others return the same metrics
            without ``params_sha256``.

    Returns:
        The metrics (also in ``metrics.json``): ``validation`` and ``test`` errors
        (:func:`evaluate`), ``training`` (seconds, epochs, steps, best_epoch,
        frames_per_second) and ``n_frames``; for an ensemble ``{"members": {seed: metrics},
        "test_mean", "test_std", "seeds"}``.
    Raises:
        ValueError: too few frames for non-empty splits, bad settings, an output folder that
            holds an earlier run (without ``overwrite``) or cannot be written, test species the
            training data lacks, labels the loss weights need but the data lacks, or data errors
            (as :func:`jaxrel.data.read_frames` and :func:`jaxrel.graph.build_graphs`).
        FloatingPointError: training diverged, or the trained model's errors are not finite.
        KeyboardInterrupt: Ctrl-C before the first epoch finished (nothing is saved).
    """
    from jaxrel.data import read_molecules

    if species_energies not in ("fit", "zero"):
        raise ValueError(f"species_energies is {species_energies!r}; use 'fit' or 'zero'")
    if seeds < 1:
        raise ValueError(f"seeds (--seeds) is {seeds}; train at least one model")
    energy_model = target == "energy"
    train_config = TrainConfig(epochs=epochs, minutes=minutes, batch_size=batch_size, learning_rate=learning_rate,
                               energy_weight=energy_weight if energy_model else 1.0,
                               forces_weight=forces_weight if energy_model else 0.0, seed=seed)
    features = (int(n_features),) if np.ndim(n_features) == 0 else tuple(int(f) for f in n_features)
    settings = dict(cutoff=cutoff, n_features=features[0], n_interactions=n_interactions, n_rbf=n_rbf, dtype=dtype,
                    lmax=lmax, features_per_l=features if len(features) > 1 else None, prior=prior, target=target,
                    readout=readout)
    ModelConfig(model, (1,), **settings)        # check the settings before reading any data
    molecules = read_molecules(data)
    needs = ((("energies", energy_weight, "--energy-weight"), ("forces", forces_weight, "--forces-weight"))
             if energy_model else ((PROPERTY_LABELS[target][0], 1.0, "--target " + target),))
    for label, weight, option in needs:
        lacking = next((f for f in molecules if getattr(f, label) is None), None)
        if weight > 0 and lacking is not None:
            fix = (f"pass {option} 0 to train without {label}" if energy_model
                   else "train another target (--target)")
            raise ValueError(f"{lacking.source} has no {label} but {option} is {weight}; {fix}, or give data "
                             f"with {label}")
    n = sum(len(f) for f in molecules)
    split = training_split(n, n_train, n_validation, seed, separate_test=bool(test_data))
    species = sorted(set(np.concatenate([f.species for f in molecules]).tolist()))
    if test_data:
        test_molecules = read_molecules(test_data)
        unknown = sorted(set(np.concatenate([f.species for f in test_molecules]).tolist()) - set(species))
        if unknown:
            raise ValueError(f"--test-data {test_data} has species {unknown} that the training data {data} lacks; "
                             "the model could not learn them, so test on frames of the trained species")
    else:
        test_molecules = select_frames(molecules, split.test)
    n_test = sum(len(f) for f in test_molecules)
    if len(split.train) == 0 or len(split.validation) == 0 or n_test == 0:
        raise ValueError(f"{data} has {n} frames: too few for non-empty train ({len(split.train)}), "
                         f"validation ({len(split.validation)}) and test ({n_test}) sets; "
                         "give more frames, --test-data, or smaller --train/--validation")
    train_frames, val_frames = select_frames(molecules, split.train), select_frames(molecules, split.validation)
    shifts, scale = _shifts_and_scale(train_frames, target, readout, species_energies == "fit")
    config = ModelConfig(model, tuple(species), **settings)
    writer = jax.process_index() == 0
    out = prepare_output(out, FILES, overwrite=overwrite) if writer else Path(out)
    mesh = batch_mesh() if mesh is None else mesh
    graphs = {name: labelled_graphs(f, cutoff, dtype, target=target)
              for name, f in (("train", train_frames), ("validation", val_frames), ("test", test_molecules))}
    fitted = None
    if prior is not None:
        force_rms = scale if graphs["train"][1].forces is not None else 0.0
        fitted = fit_repulsive_prior(graphs["train"][0], config.species, force_rms)
    members = list(range(seed, seed + seeds))
    created = [Potential.create(config, shifts, scale, seed=s, prior=fitted) for s in members]
    potential = created[0][0]
    folders = [out / "model"] if seeds == 1 else [out / f"model_seed{s}" for s in members]
    bests, histories = train(potential, [p for _, p in created], graphs["train"], graphs["validation"],
                             train_config, checkpoint_dir=folders, progress=progress, mesh=mesh)
    settings = {"data": str(data), "test_data": None if test_data is None else str(test_data), "model": model,
                "cutoff": cutoff, "features": list(features), "lmax": lmax, "interactions": n_interactions,
                "rbf": n_rbf,
                "dtype": dtype, "epochs": epochs, "minutes": minutes, "batch_size": batch_size,
                "lr": learning_rate, "energy_weight": energy_weight, "forces_weight": forces_weight,
                "species_energies": species_energies, "prior": prior, "train": n_train, "validation": n_validation,
                "seed": seed, "seeds": seeds, "target": target, "readout": readout, "out": str(out),
                "devices": mesh.size, "processes": jax.process_count()}
    per_member = {}
    for s, best, history, folder in zip(members, bests, histories, folders):
        metrics = {name: evaluate(potential, best, *graphs[name], mesh=mesh) for name in ("validation", "test")}
        metrics["training"] = {k: history[k] for k in ("seconds", "epochs", "steps", "best_epoch",
                                                       "frames_per_second", "interrupted")}
        metrics["n_frames"] = {"train": len(split.train), "validation": len(split.validation), "test": n_test}
        run = {"command": sys.argv, "data": str(data), "test_data": settings["test_data"],
               "model": config.to_dict(), "training": settings, "init_seed": s,
               "species_energies_eV": {str(k): v for k, v in shifts.items()}, "energy_scale_eV": scale,
               "history": history}
        if writer:
            save_checkpoint(folder, potential, best, metadata={"run": run, "metrics": metrics})
            metrics["params_sha256"] = checkpoint_digest(folder)
        per_member[s] = metrics
    if seeds == 1:
        metrics = per_member[seed]
    else:
        if writer:
            save_ensemble(out, [f.name for f in folders], members, metadata={"training": settings})
        errors = {key: [m["test"][key] for m in per_member.values()]
                  for key, value in per_member[seed]["test"].items() if key.endswith(("_mae_meV", "_mae_meV_per_A",
                                                                                      "_mae_eV", "_mae_D"))
                  and value is not None}
        metrics = {"seeds": members, "members": {str(s): m for s, m in per_member.items()},
                   "test_mean": {k: float(np.mean(v)) for k, v in errors.items()},
                   "test_std": {k: float(np.std(v)) for k, v in errors.items()},
                   "training": per_member[seed]["training"]}
    if writer:
        write_json(out / "metrics.json", metrics)
    bad = [f"{name}.{key}" for m in per_member.values() for name in ("validation", "test")
           for key, value in m[name].items() if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        raise FloatingPointError(f"the trained model's {', '.join(bad)} is not finite (null in {out / 'metrics.json'}); "
                                 "lower --lr or check the data for outliers")
    return metrics
