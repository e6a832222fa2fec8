"""MD throughput of jaxrel's JAX-MD driver against ASE's velocity Verlet with the same model.

Systems (float32 models, 5 Å cutoff, 64 features, 3 interactions, as trained by
benchmarks/train_rmd17.py):
* ethanol, 9 atoms, free space: the SchNet and PaiNN models trained on rMD17 ethanol;
* water, 64 H2O (192 atoms) in the periodic 12.445 Å box of water_dft/water64_dft.npz
  (frame 0): untrained models of the same size (random weights, species H and O);
* argon, 1000 atoms in a periodic cubic box (36.2 Å) at Rahman's liquid density, from
  ``jaxrel.data.noble_gas.sample_noble_gas`` (LJ only, a short equilibration):
  untrained models of the same size.
Throughput does not depend on the weights, only on the graph sizes. The untrained models
have no repulsive core, so atoms would overlap and JAX-MD runs of hundreds of steps blow
up within tens of fs (PaiNN on water even with its energy scaled by 0.001); there the
JAX-MD runs use masses × :data:`UNTRAINED_MASS_FACTOR` (velocities / √1000, same
temperature), which slows the motion ~30× and keeps the structure over the measured steps.
A JAX-MD step costs the same at any mass (the neighbour-list update runs every step inside
the vmapped loop; measured: 17-20 steps/s either way for SchNet water). The short ASE runs
keep the real masses, so that the edge count changes from step to step as in a real run.

Both drivers integrate NVE with velocity Verlet at dt = 0.5 fs from the same positions and
Maxwell–Boltzmann velocities: ``jaxrel.md.simulate`` (jitted blocks of steps, the neighbour
list rebuilt at every force evaluation, compilation excluded from its steps/s) and
``ase.md.verlet.VelocityVerlet`` with :class:`jaxrel.calculator.JaxrelCalculator` (one
calculator call per step: a jitted neighbour-list update and the jitted model, after two
warm-up steps that compile). ASE runs fewer steps. The JSON also gives the bound
1 / (model call) that any driver calling the jitted model once per step from Python could
reach at best. Replica scaling: replica-steps/s of ethanol for R = 1, 2, 4, 8, 16 replicas
vmapped in one simulation.

    python benchmarks/md_throughput.py [--quick]

Needs runs/bench_{schnet,painn}_ethanol/model (``python benchmarks/train_rmd17.py
--minutes 30``) and the shared data ($JAXREL_DATA, default ../shared/data). Writes
benchmarks/results/md_throughput_<backend>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
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
from jaxrel.models import Potential

ROOT = Path(__file__).resolve().parents[1]
DT_FS = 0.5
UNTRAINED_MASS_FACTOR = 1000.0

from md_stability import data_dir, load_trained  # noqa: E402  (benchmarks/ is on sys.path)
from train_rmd17 import machine  # noqa: E402


def systems(quick: bool) -> list[dict]:
    """Starting structures: name, species (n,), positions (n, 3) Å, cell or None, T (K)."""
    data = data_dir()
    ethanol = read_frames(data / "rmd17" / "rmd17_ethanol_test_01.npz")
    water = read_frames(data / "water_dft" / "water64_dft.npz")
    argon = sample_noble_gas("Ar", n_atoms=1000, n_frames=1, seed=0, three_body=False,
                             equilibration_steps=100 if quick else 500, steps_between_frames=10)
    return [
        {"system": "ethanol", "species": ethanol.species, "positions": ethanol.positions[0],
         "cell": None, "temperature_K": 500.0, "source": "rmd17_ethanol_test_01 frame 0"},
        {"system": "water64", "species": water.species, "positions": water.positions[0],
         "cell": water.cell if water.cell.ndim == 2 else water.cell[0], "temperature_K": 300.0,
         "source": "water_dft/water64_dft.npz frame 0"},
        {"system": "argon1000", "species": argon.species, "positions": argon.positions[0],
         "cell": argon.cell, "temperature_K": float(argon.temperature_K),
         "source": "sample_noble_gas('Ar', n_atoms=1000, three_body=False), LJ Langevin "
                   f"{100 if quick else 500} × 10 fs equilibration"},
    ]


def model_for(system: dict, model: str):
    """``(potential, params, weights, mass_factor)``: the trained model for ethanol, else an
    untrained one of the same size (JAX-MD with heavy atoms, see the module docstring)."""
    potential, params, _ = load_trained(model)
    if system["system"] == "ethanol":
        return potential, params, f"trained on rMD17 ethanol (runs/bench_{model}_ethanol)", 1.0
    config = dataclasses.replace(potential.config, species=tuple(sorted(set(system["species"].tolist()))))
    potential, params = Potential.create(config, seed=0)
    return (potential, params, "untrained (random weights, seed 0), same size as the ethanol model",
            UNTRAINED_MASS_FACTOR)


def atoms_of(system: dict) -> ase.Atoms:
    """ASE atoms with Maxwell–Boltzmann velocities (no net momentum) at the system's
    temperature."""
    periodic = system["cell"] is not None
    atoms = ase.Atoms(numbers=system["species"], positions=system["positions"],
                      cell=system["cell"], pbc=periodic)
    thermalize_momenta(atoms, system["temperature_K"], rng=np.random.default_rng(0))
    Stationary(atoms)
    return atoms


def jax_md_run(potential, params, system: dict, atoms: ase.Atoms, n_steps: int,
               replicas: int = 1, mass_factor: float = 1.0) -> dict:
    """Steps/s of jaxrel.md.simulate (NVE) for ``replicas`` copies of the structure, with
    the masses × ``mass_factor`` and velocities / √``mass_factor`` of ``atoms``."""
    config = MDConfig(ensemble="nve", dt_fs=DT_FS, temperature_K=system["temperature_K"],
                      n_steps=n_steps, log_every=min(n_steps, 250), seed=0)
    positions = np.repeat(system["positions"][None], replicas, axis=0)
    tic = time.perf_counter()
    velocities = atoms.get_velocities() * ase.units.fs / np.sqrt(mass_factor)  # Å/fs
    traj = simulate(potential, params, positions, system["species"], cell=system["cell"],
                    masses=atoms.get_masses() * mass_factor, config=config,
                    velocities=np.repeat(velocities[None], replicas, axis=0), progress=False)
    return {"n_steps": n_steps, "replicas": replicas, "steps_per_second": traj.steps_per_second,
            "replica_steps_per_second": traj.steps_per_second * replicas,
            "wall_seconds_including_compilation": time.perf_counter() - tic,
            "simulated_ps": float(traj.time_ps[-1]), "stop_reason": traj.stop_reason,
            "n_neighbour_reallocations": traj.n_reallocations}


def ase_run(potential, params, system: dict, atoms: ase.Atoms, n_steps: int) -> dict:
    """Steps/s of ASE's VelocityVerlet with JaxrelCalculator from a copy of ``atoms``, and
    the time of one jitted model call (the bound for any driver that calls the model once
    per step from Python)."""
    atoms = atoms.copy()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the steps, R = 1, 4, 16 only")
    parser.add_argument("--models", nargs="+", default=["schnet", "painn"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    jax_steps = {"ethanol": 2000, "water64": 500, "argon1000": 200}
    ase_steps = {"ethanol": 1000, "water64": 50, "argon1000": 20}
    scaling_steps, scaling_replicas = 1000, [1, 2, 4, 8, 16]
    if args.quick:
        jax_steps = {k: v // 4 for k, v in jax_steps.items()}
        ase_steps = {k: max(2, v // 4) for k, v in ase_steps.items()}
        scaling_steps, scaling_replicas = 250, [1, 4, 16]
    result = {
        "benchmark": "md_throughput",
        "command": "python benchmarks/md_throughput.py" + (" --quick" if args.quick else ""),
        "machine": machine(), "load_average_1min_at_start": os.getloadavg()[0],
        "settings": {"integrator": "NVE velocity Verlet in both drivers (jaxrel.md 'nve' = "
                                   "jax_md.simulate.nve; ase.md.verlet.VelocityVerlet)",
                     "dt_fs": DT_FS, "model_dtype": "float32",
                     "steps_per_second": "integration steps per wall-clock second, compilation "
                                         "excluded; replicas advance together (one step each)"},
        "comparisons": [], "replica_scaling": {},
    }
    structures = systems(args.quick)
    for system in structures:
        for model in args.models:
            potential, params, weights, mass_factor = model_for(system, model)
            atoms = atoms_of(system)
            ase_result = ase_run(potential, params, system, atoms, ase_steps[system["system"]])
            jax_result = jax_md_run(potential, params, system, atoms, jax_steps[system["system"]],
                                    mass_factor=mass_factor)
            speed = jax_result["steps_per_second"]
            entry = {"system": system["system"], "n_atoms": len(system["species"]),
                     "periodic": system["cell"] is not None, "source": system["source"],
                     "temperature_K": system["temperature_K"], "model": model, "weights": weights,
                     "jax_md_mass_factor": mass_factor, "jax_md": jax_result, "ase": ase_result,
                     "speedup_jax_md_over_ase": speed / ase_result["steps_per_second"],
                     "speedup_jax_md_over_python_loop_bound":
                         speed / ase_result["python_loop_bound_steps_per_second"]}
            result["comparisons"].append(entry)
            print(f"{system['system']:9s} {model:6s} JAX-MD {jax_result['steps_per_second']:8.1f} steps/s  "
                  f"ASE {ase_result['steps_per_second']:6.2f} steps/s  "
                  f"× {entry['speedup_jax_md_over_ase']:.0f}")
    ethanol = structures[0]
    for model in args.models:
        potential, params, _, _ = model_for(ethanol, model)
        atoms = atoms_of(ethanol)
        runs = [jax_md_run(potential, params, ethanol, atoms, scaling_steps, r)
                for r in scaling_replicas]
        base = runs[0]["replica_steps_per_second"]
        for run in runs:
            run["speedup_over_one_replica"] = run["replica_steps_per_second"] / base
            run["parallel_efficiency"] = run["speedup_over_one_replica"] / run["replicas"]
            print(f"ethanol {model:6s} R={run['replicas']:2d} {run['replica_steps_per_second']:8.1f} "
                  f"replica-steps/s (× {run['speedup_over_one_replica']:.2f})")
        result["replica_scaling"][model] = runs
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"md_throughput_{result['machine']['backend']}.json"
    path.write_text(json.dumps(result, indent=2, allow_nan=False, ensure_ascii=False))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
