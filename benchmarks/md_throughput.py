"""MD throughput of jaxrel's JAX-MD driver against ASE's velocity Verlet with the same model.

Systems (float32 models, 5 Å cutoff, 64 features, 3 interactions, as trained by
benchmarks/train_rmd17.py):
* ethanol, 9 atoms, free space: the SchNet and PaiNN models trained on rMD17 ethanol
  (runs/bench_{schnet,painn}_ethanol); where they are absent, untrained models of the same
  size, run like the untrained models below (the JSON's ``weights`` says which);
* water, 64 H2O (192 atoms) in the periodic 12.445 Å box of water_dft/water64_dft.npz
  (frame 0): untrained models of the same size (random weights, species H and O);
* argon, 1000 atoms in a periodic cubic box (36.2 Å) at Rahman's liquid density, from
  ``jaxrel.data.noble_gas.sample_noble_gas`` (LJ only, a short equilibration):
  untrained models of the same size.
Throughput does not depend on the weights, only on the graph sizes. The untrained models
have no repulsive core, so atoms would overlap and JAX-MD runs of hundreds of steps blow
up within tens of fs (PaiNN on water even with its energy scaled by 0.001); there the
runs of both drivers use masses × :data:`UNTRAINED_MASS_FACTOR` (velocities / √1000, same
temperature), which slows the motion ~30× and keeps the structure over the measured steps.
A step of ASE or of the all-pairs JAX-MD path costs the same at any mass (the neighbour list
is searched at every step). The Verlet list is not: it is rebuilt when an atom has moved
skin/2, and slow atoms get there ~30× later, so its measured steps/s is an upper bound at
real masses. The JSON gives ``jax_md_real_mass_estimate``: the rebuilds scaled by
√(mass factor) (at most one per step), each extra one charged the cost of a whole all-pairs
step (a search and a step, more than a rebuild costs), a conservative estimate of the
real-mass speed.

Both drivers integrate NVE with velocity Verlet at dt = 0.5 fs from the same positions and
Maxwell–Boltzmann velocities: ``jaxrel.md.simulate`` (jitted blocks of steps, compilation
excluded from its steps/s) and ``ase.md.verlet.VelocityVerlet`` with
:class:`jaxrel.calculator.JaxrelCalculator` (one calculator call per step: a jitted
neighbour-list update and the jitted model, after two warm-up steps that compile). JAX-MD
runs twice, side by side: ``jax_md_all_pairs`` is the neighbour handling before the Verlet
skin (``MDConfig(skin=0, cell_list=False)``: an O(n²) search inside every force evaluation)
and ``jax_md`` the default (``MDConfig()``: a Verlet list with a 0.5 Å skin, rebuilt when an
atom has moved 0.25 Å, by JAX MD's cell list in boxes at least 3 × 5.5 Å wide, here argon).
ASE runs fewer steps. The JSON also gives the bound 1 / (model call) that any driver calling
the jitted model once per step from Python could reach at best. Replica scaling:
replica-steps/s of ethanol for R = 1, 2, 4, 8, 16 replicas vmapped in one simulation, and
the same with the replicas sharded over 4 host devices (a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; the devices share the machine's
cores, so on a CPU this measures the overhead of sharding, not a speed-up).

    python benchmarks/md_throughput.py [--quick]

Uses runs/bench_{schnet,painn}_ethanol/model if present (``python benchmarks/train_rmd17.py
--minutes 30``) and needs the shared data ($JAXREL_DATA, default ../shared/data). Writes
benchmarks/results/md_throughput_<backend>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ase
import ase.units
import jax
import numpy as np
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from jaxrel.calculator import JaxrelCalculator
from jaxrel.data import read_frames
from jaxrel.data.noble_gas import sample_noble_gas
from jaxrel.graph import build_graphs
from jaxrel.md import MDConfig, simulate
from jaxrel.models import ModelConfig, Potential

ROOT = Path(__file__).resolve().parents[1]
DT_FS = 0.5
UNTRAINED_MASS_FACTOR = 1000.0

from md_stability import data_dir, load_trained  # noqa: E402  (benchmarks/ is on sys.path)
from train_rmd17 import machine  # noqa: E402


def ethanol_system() -> dict:
    """Ethanol's starting structure: name, species (n,), positions (n, 3) Å, cell None, T (K)."""
    ethanol = read_frames(data_dir() / "rmd17" / "rmd17_ethanol_test_01.npz")
    return {"system": "ethanol", "species": ethanol.species, "positions": ethanol.positions[0],
            "cell": None, "temperature_K": 500.0, "source": "rmd17_ethanol_test_01 frame 0"}


def systems(quick: bool) -> list[dict]:
    """Starting structures: name, species (n,), positions (n, 3) Å, cell or None, T (K)."""
    data = data_dir()
    water = read_frames(data / "water_dft" / "water64_dft.npz")
    argon = sample_noble_gas("Ar", n_atoms=1000, n_frames=1, seed=0, three_body=False,
                             equilibration_steps=100 if quick else 500, steps_between_frames=10)
    return [
        ethanol_system(),
        {"system": "water64", "species": water.species, "positions": water.positions[0],
         "cell": water.cell if water.cell.ndim == 2 else water.cell[0], "temperature_K": 300.0,
         "source": "water_dft/water64_dft.npz frame 0"},
        {"system": "argon1000", "species": argon.species, "positions": argon.positions[0],
         "cell": argon.cell, "temperature_K": float(argon.temperature_K),
         "source": "sample_noble_gas('Ar', n_atoms=1000, three_body=False), LJ Langevin "
                   f"{100 if quick else 500} × 10 fs equilibration"},
    ]


def model_for(system: dict, model: str):
    """``(potential, params, weights, mass_factor)``: the trained model for ethanol if
    runs/bench_<model>_ethanol holds it, else an untrained one of the same size (JAX-MD with
    heavy atoms, see the module docstring)."""
    species = tuple(sorted(set(system["species"].tolist())))
    trained = (ROOT / "runs" / f"bench_{model}_ethanol" / "model" / "config.json").is_file()
    if trained:
        potential, params, _ = load_trained(model)
        if system["system"] == "ethanol":
            return potential, params, f"trained on rMD17 ethanol (runs/bench_{model}_ethanol)", 1.0
        config = dataclasses.replace(potential.config, species=species)
    else:   # the size benchmarks/train_rmd17.py trains
        config = ModelConfig(model, species, cutoff=5.0, n_features=64, n_interactions=3, n_rbf=20)
    potential, params = Potential.create(config, seed=0)
    return (potential, params, "untrained (random weights, seed 0), same size as the ethanol model of "
            "benchmarks/train_rmd17.py" + ("" if trained else " (no trained model in runs/)"), UNTRAINED_MASS_FACTOR)


def atoms_of(system: dict) -> ase.Atoms:
    """ASE atoms with Maxwell–Boltzmann velocities (no net momentum) at the system's
    temperature."""
    periodic = system["cell"] is not None
    atoms = ase.Atoms(numbers=system["species"], positions=system["positions"],
                      cell=system["cell"], pbc=periodic)
    thermalize_momenta(atoms, system["temperature_K"], rng=np.random.default_rng(0))
    Stationary(atoms)
    return atoms


ALL_PAIRS = {"skin": 0.0, "cell_list": False}
"""The neighbour handling before the Verlet skin: an O(n²) search inside every force evaluation."""


def jax_md_run(potential, params, system: dict, atoms: ase.Atoms, n_steps: int,
               replicas: int = 1, mass_factor: float = 1.0, n_devices: int | None = None,
               **neighbours) -> dict:
    """Steps/s of jaxrel.md.simulate (NVE) for ``replicas`` copies of the structure, with
    the masses × ``mass_factor`` and velocities / √``mass_factor`` of ``atoms``;
    ``neighbours``: MDConfig's skin and cell_list (default: MDConfig's)."""
    config = MDConfig(ensemble="nve", dt_fs=DT_FS, temperature_K=system["temperature_K"],
                      n_steps=n_steps, log_every=min(n_steps, 250), seed=0, **neighbours)
    positions = np.repeat(system["positions"][None], replicas, axis=0)
    tic = time.perf_counter()
    velocities = atoms.get_velocities() * ase.units.fs / np.sqrt(mass_factor)  # Å/fs
    traj = simulate(potential, params, positions, system["species"], cell=system["cell"],
                    masses=atoms.get_masses() * mass_factor, config=config,
                    velocities=np.repeat(velocities[None], replicas, axis=0), progress=False,
                    n_devices=n_devices)
    return {"n_steps": n_steps, "replicas": replicas, "skin_A": config.skin, "cell_list": config.cell_list,
            "n_devices": n_devices, "steps_per_second": traj.steps_per_second,
            "replica_steps_per_second": traj.steps_per_second * replicas,
            "wall_seconds_including_compilation": time.perf_counter() - tic,
            "simulated_ps": float(traj.time_ps[-1]), "stop_reason": traj.stop_reason,
            "n_neighbour_reallocations": traj.n_reallocations, "n_neighbour_rebuilds": traj.n_rebuilds}


def ase_run(potential, params, system: dict, atoms: ase.Atoms, n_steps: int, mass_factor: float = 1.0) -> dict:
    """Steps/s of ASE's VelocityVerlet with JaxrelCalculator from a copy of ``atoms`` (masses ×
    ``mass_factor``, velocities / √``mass_factor``), and the time of one jitted model call (the
    bound for any driver that calls the model once per step from Python)."""
    velocities = atoms.get_velocities()
    atoms = atoms.copy()
    atoms.set_masses(atoms.get_masses() * mass_factor)
    atoms.set_velocities(velocities / np.sqrt(mass_factor))
    atoms.calc = JaxrelCalculator(potential, params)
    dyn = VelocityVerlet(atoms, timestep=DT_FS * ase.units.fs)
    dyn.run(2)  # compiles the calculator's functions
    tic = time.perf_counter()
    dyn.run(n_steps)
    seconds = time.perf_counter() - tic
    graph = build_graphs(atoms.positions, atoms.numbers, potential.config.cutoff,
                         cell=system["cell"]).frame(0).astype(potential.config.dtype)
    energy_and_forces = jax.jit(potential.energy_and_forces)
    jax.block_until_ready(energy_and_forces(params, graph))
    tic = time.perf_counter()
    jax.block_until_ready(energy_and_forces(params, graph))
    model = time.perf_counter() - tic
    return {"n_steps": n_steps, "steps_per_second": n_steps / seconds,
            "seconds_per_step": seconds / n_steps, "model_call_seconds": model,
            "python_loop_bound_steps_per_second": 1.0 / model}


def replica_scaling(models: list[str], steps: int, replicas: list[int], n_devices: int | None = None) -> dict:
    """Replica-steps/s of ethanol for each model and number of replicas (default neighbour handling)."""
    ethanol = ethanol_system()
    scaling = {}
    for model in models:
        potential, params, _, mass_factor = model_for(ethanol, model)
        atoms = atoms_of(ethanol)
        runs = [jax_md_run(potential, params, ethanol, atoms, steps, r, mass_factor=mass_factor, n_devices=n_devices)
                for r in replicas]
        base = runs[0]["replica_steps_per_second"]
        for run in runs:
            run["speedup_over_one_replica"] = run["replica_steps_per_second"] / base
            run["parallel_efficiency"] = run["speedup_over_one_replica"] / run["replicas"]
            print(f"ethanol {model:6s} R={run['replicas']:2d} devices={n_devices or 1} "
                  f"{run['replica_steps_per_second']:8.1f} replica-steps/s (× {run['speedup_over_one_replica']:.2f})",
                  file=sys.stderr)
        scaling[model] = runs
    return scaling


def sharded_scaling(models: list[str], steps: int, replicas: list[int], n_devices: int = 4) -> dict:
    """:func:`replica_scaling` with the replicas sharded over ``n_devices`` forced host devices, in a
    subprocess (XLA_FLAGS must be set before jax is imported)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}")
    command = [sys.executable, __file__, "--sharded-worker", str(n_devices), "--models", *models,
               "--scaling-steps", str(steps), "--replicas", *map(str, replicas)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    sys.stderr.write(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the steps, R = 1, 4, 16 only")
    parser.add_argument("--models", nargs="+", default=["schnet", "painn"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--sharded-worker", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--scaling-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--replicas", type=int, nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sharded_worker:
        print(json.dumps(replica_scaling(args.models, args.scaling_steps, args.replicas, args.sharded_worker),
                         allow_nan=False))
        return
    jax_steps = {"ethanol": 2000, "water64": 500, "argon1000": 400}
    ase_steps = {"ethanol": 1000, "water64": 50, "argon1000": 20}
    scaling_steps, scaling_replicas, sharded_replicas = 1000, [1, 2, 4, 8, 16], [4, 8, 16]
    if args.quick:
        jax_steps = {k: v // 4 for k, v in jax_steps.items()}
        ase_steps = {k: max(2, v // 4) for k, v in ase_steps.items()}
        scaling_steps, scaling_replicas, sharded_replicas = 250, [1, 4, 16], [4, 16]
    default = MDConfig()
    result = {
        "benchmark": "md_throughput",
        "command": "python benchmarks/md_throughput.py" + (" --quick" if args.quick else ""),
        "machine": machine(), "load_average_1min_at_start": os.getloadavg()[0],
        "settings": {"integrator": "NVE velocity Verlet in both drivers (jaxrel.md 'nve' = "
                                   "jax_md.simulate.nve; ase.md.verlet.VelocityVerlet)",
                     "dt_fs": DT_FS, "model_dtype": "float32",
                     "steps_per_second": "integration steps per wall-clock second, compilation "
                                         "excluded; replicas advance together (one step each)",
                     "jax_md": f"MDConfig defaults: Verlet list, skin {default.skin} Å, cell list where the "
                               "box allows it (orthorhombic, every side > 3 × (cutoff + skin))",
                     "jax_md_all_pairs": "MDConfig(skin=0, cell_list=False): the neighbour handling before the "
                                         "skin, an O(n²) search inside every force evaluation"},
        "comparisons": [], "replica_scaling": {}, "replica_scaling_sharded": {},
    }
    structures = systems(args.quick)
    for system in structures:
        for model in args.models:
            potential, params, weights, mass_factor = model_for(system, model)
            atoms = atoms_of(system)
            ase_result = ase_run(potential, params, system, atoms, ase_steps[system["system"]], mass_factor)
            runs = {name: jax_md_run(potential, params, system, atoms, jax_steps[system["system"]],
                                     mass_factor=mass_factor, **neighbours)
                    for name, neighbours in (("jax_md_all_pairs", ALL_PAIRS), ("jax_md", {}))}
            speed = runs["jax_md"]["steps_per_second"]
            # the rebuilds at real masses that the heavy atoms did not need, each charged an all-pairs step
            extra = min(1.0, runs["jax_md"]["n_neighbour_rebuilds"] * (np.sqrt(mass_factor) - 1.0)
                        / runs["jax_md"]["n_steps"])
            real = 1.0 / (1.0 / speed + extra / runs["jax_md_all_pairs"]["steps_per_second"])
            cell = system["cell"]
            cells = cell is not None and np.array_equal(np.diag(np.diag(cell)), cell) and bool(
                (np.diag(cell) > 3 * (potential.config.cutoff + default.skin)).all())
            entry = {"system": system["system"], "n_atoms": len(system["species"]),
                     "periodic": cell is not None, "source": system["source"],
                     "temperature_K": system["temperature_K"], "model": model, "weights": weights,
                     "jax_md_mass_factor": mass_factor, "jax_md_cell_list": cells, **runs, "ase": ase_result,
                     "speedup_jax_md_over_ase": speed / ase_result["steps_per_second"],
                     "speedup_jax_md_all_pairs_over_ase":
                         runs["jax_md_all_pairs"]["steps_per_second"] / ase_result["steps_per_second"],
                     "speedup_jax_md_over_all_pairs": speed / runs["jax_md_all_pairs"]["steps_per_second"],
                     "speedup_jax_md_over_python_loop_bound":
                         speed / ase_result["python_loop_bound_steps_per_second"],
                     "jax_md_real_mass_estimate": {
                         "extra_rebuilds_per_step": extra, "steps_per_second": real,
                         "speedup_over_ase": real / ase_result["steps_per_second"],
                         "speedup_over_all_pairs": real / runs["jax_md_all_pairs"]["steps_per_second"]}}
            result["comparisons"].append(entry)
            print(f"{system['system']:9s} {model:6s} JAX-MD {speed:8.1f} steps/s (all pairs "
                  f"{runs['jax_md_all_pairs']['steps_per_second']:8.1f})  ASE {ase_result['steps_per_second']:6.2f} "
                  f"steps/s  × {entry['speedup_jax_md_over_ase']:.1f} (all pairs "
                  f"× {entry['speedup_jax_md_all_pairs_over_ase']:.1f}; real-mass estimate × "
                  f"{entry['jax_md_real_mass_estimate']['speedup_over_ase']:.1f})")
    result["replica_scaling"] = replica_scaling(args.models, scaling_steps, scaling_replicas)
    result["replica_scaling_sharded"] = {
        "n_devices": 4, "how": "a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4: four "
                               "host devices sharing this machine's cores",
        **sharded_scaling(args.models, scaling_steps, sharded_replicas)}
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"md_throughput_{result['machine']['backend']}.json"
    path.write_text(json.dumps(result, indent=2, allow_nan=False, ensure_ascii=False))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
