"""How the exact 3-body decomposition grows with atoms and frames (walk-chain engine).

Systems: liquid argon at Rahman's density from ``jaxrel.data.noble_gas.sample_noble_gas``
(LJ only, a short equilibration: the graph sizes are those of the liquid), 64, 512 and
4096 atoms, cutoff 2.1 σ = 7.15 Å (the noble-gas data's default, ≈ 32 neighbours). Model:
SchNet 32 features × 2 interactions (the quickstart's argon model), untrained (speed does
not depend on the weights), float32 by default.

Measures, in one run:
* seconds of ``nbody_decomposition(max_order=3)`` per frame against atoms (best of
  ``--repeats`` after a compiling call), with the walk count and the terms of each order,
  beside one jitted energy + forces evaluation of the same model;
* seconds against frames: ``nbody_decompositions`` of 1, 2, 4, 8 frames of the 512-atom
  liquid in one vmapped call;
* peak memory against atoms: XLA's compiled temporary + output bytes of the chain
  (``chain_relevance``) for each size, and the process's peak resident memory.

    python benchmarks/decomposition_scaling.py [--sizes 64 512 4096] [--frames 1 2 4 8] [--repeats 3]

Writes benchmarks/results/decomposition_scaling_<backend>.json and decomposition_scaling.png.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure

from jaxrel.data.noble_gas import sample_noble_gas
from jaxrel.files import write_json
from jaxrel.graph import build_graphs
from jaxrel.models import ModelConfig, Potential
from jaxrel.nn import RULES
from jaxrel.relevance import nbody_decomposition, nbody_decompositions
from jaxrel.relevance.chain import chain_relevance, chain_topology

ROOT = Path(__file__).resolve().parents[1]

from relevance_speed import best_of  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from train_rmd17 import machine  # noqa: E402


def liquid(n_atoms: int, n_frames: int = 1):
    """Argon liquid frames: positions (n_frames, n, 3) Å, species (n,), cell (3, 3) Å, cutoff Å."""
    trajectory = sample_noble_gas("Ar", n_atoms=n_atoms, n_frames=n_frames, seed=0, three_body=False,
                                  equilibration_steps=50, steps_between_frames=5)
    return trajectory.positions, trajectory.species, trajectory.cell, trajectory.cutoff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 4096])
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    by_atoms, potential, params = [], None, None
    for n in args.sizes:
        positions, species, cell, cutoff = liquid(n)
        if potential is None:
            config = ModelConfig("schnet", (18,), cutoff=cutoff, n_features=32, n_interactions=2, n_rbf=20,
                                 dtype=args.dtype)
            potential, params = Potential.create(config, seed=0)
        graph = build_graphs(positions, species, cutoff, cell=cell).frame(0)
        energy_and_forces = jax.jit(potential.energy_and_forces)
        jax.block_until_ready(energy_and_forces(params, graph))
        ef_seconds, _ = best_of(lambda: jax.block_until_ready(energy_and_forces(params, graph)), 10)
        start = time.perf_counter()
        nbody_decomposition(potential, params, graph, max_order=3)
        first = time.perf_counter() - start
        seconds, nb = best_of(lambda: nbody_decomposition(potential, params, graph, max_order=3), args.repeats)
        topology, walks = chain_topology(graph, 2)
        compiled = chain_relevance.lower(potential, params, graph, topology, RULES["gi"], 256).compile()
        memory = compiled.memory_analysis()
        row = {"n_atoms": n, "n_directed_edges": int(np.asarray(graph.edge_mask).sum()),
               "n_walks": int(len(walks.flat)), "n_terms": {str(k): int(len(t.atoms)) for k, t in nb.orders.items()},
               "seconds": seconds, "seconds_first_call_with_compile": first,
               "energy_and_forces_seconds": ef_seconds, "ratio_to_energy_and_forces": seconds / ef_seconds,
               "compiled_temp_bytes": int(memory.temp_size_in_bytes) if memory else None,
               "compiled_output_bytes": int(memory.output_size_in_bytes) if memory else None,
               "peak_resident_bytes_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        by_atoms.append(row)
        print(row)

    by_frames = []
    n = 512 if 512 in args.sizes else args.sizes[0]
    positions, species, cell, cutoff = liquid(n, max(args.frames))
    graphs = build_graphs(positions, species, cutoff, cell=cell)
    for f in args.frames:
        batch = jax.tree.map(lambda x: x[:f], graphs)
        nbody_decompositions(potential, params, batch, max_order=3, frames_per_call=max(args.frames))
        seconds, _ = best_of(lambda: nbody_decompositions(potential, params, batch, max_order=3,
                                                          frames_per_call=max(args.frames)), args.repeats)
        by_frames.append({"n_atoms": n, "n_frames": f, "seconds": seconds, "seconds_per_frame": seconds / f})
        print(by_frames[-1])

    result = {"benchmark": "decomposition_scaling", "command": "python benchmarks/decomposition_scaling.py",
              "machine": machine(), "model": potential.config.to_dict(), "max_order": 3, "rules": "gi",
              "system": "argon liquid (sample_noble_gas, LJ, 50 equilibration steps), cutoff 2.1 σ",
              "by_atoms": by_atoms, "by_frames": by_frames}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"decomposition_scaling_{jax.default_backend()}.json"
    write_json(path, result)

    fig = Figure(figsize=(10, 3.2))
    ax = fig.subplots(1, 3)
    atoms = [r["n_atoms"] for r in by_atoms]
    ax[0].loglog(atoms, [r["seconds"] for r in by_atoms], "o-", label="3-body decomposition")
    ax[0].loglog(atoms, [by_atoms[-1]["seconds"] * a / atoms[-1] for a in atoms], "k--", lw=0.8, label="∝ atoms")
    ax[0].set(xlabel="atoms", ylabel="seconds per frame")
    ax[0].legend(fontsize=8)
    ax[1].plot([r["n_frames"] for r in by_frames], [r["seconds"] for r in by_frames], "o-")
    ax[1].set(xlabel=f"frames of {n} atoms in one call", ylabel="seconds", ylim=(0, None))
    ax[2].loglog(atoms, [(r["compiled_temp_bytes"] or 0) / 2**20 for r in by_atoms], "o-", label="XLA temporaries")
    ax[2].set(xlabel="atoms", ylabel="MiB")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "decomposition_scaling.png", dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
