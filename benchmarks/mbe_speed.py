"""Cost of the model's many-body expansion beside GNN-LRP on one 64-atom argon frame.

The quickstart's system and model size: liquid argon, 64 atoms, cutoff 7.15 Å (≈ 19k
connected triplets), SchNet with 32 features and 2 interactions (float32, the trained
weights do not change the cost, so the model is freshly initialised). Timed side by side
in one run, each the median of ``--repeats`` runs after one warm-up (compilation):

* the MBE up to 3-body terms, without and with the body-order split of the forces;
* the GNN-LRP n-body decomposition (GI rule) of the same frame up to 3-body terms;
* one energy + forces evaluation of the frame.

Goal (issue "faithfulness audit"): the 3-body MBE in under 2 s on the 2-core CPU.
Results: benchmarks/results/mbe_speed_<backend>.json.

    python benchmarks/mbe_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_rmd17 import machine  # noqa: E402

from jaxrel.data.noble_gas import generate_noble_gas  # noqa: E402
from jaxrel.files import write_json  # noqa: E402
from jaxrel.graph import build_graphs  # noqa: E402
from jaxrel.models import ModelConfig, Potential  # noqa: E402
from jaxrel.relevance import connected_sets, many_body_expansion, nbody_decomposition  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    data = generate_noble_gas("Ar", n_atoms=64, n_frames=1, seed=0)
    cutoff = float(data["cutoff"])
    graph = build_graphs(data["coords"], data["species"], cutoff, cell=data["cell"])
    potential, params = Potential.create(ModelConfig("schnet", (18,), cutoff=cutoff, n_features=32,
                                                     n_interactions=2, n_rbf=20), seed=0)
    frame = graph.frame(0).astype("float32")
    sets = connected_sets(frame, 3)
    energy_and_forces = jax.jit(potential.energy_and_forces)

    def one_evaluation():
        jax.block_until_ready(energy_and_forces(params, graph.astype("float32")))

    seconds = {
        "mbe_order3": timed(lambda: many_body_expansion(potential, params, graph, max_order=3), args.repeats),
        "mbe_order3_with_forces": timed(lambda: many_body_expansion(potential, params, graph, max_order=3,
                                                                    forces=True), args.repeats),
        "gnn_lrp_order3_gi": timed(lambda: nbody_decomposition(potential, params, frame, 3, "gi"), args.repeats),
        "energy_and_forces": timed(one_evaluation, args.repeats)}
    result = {"machine": machine(), "command": "python benchmarks/mbe_speed.py " + " ".join(sys.argv[1:]),
              "system": f"liquid Ar, 64 atoms, cutoff {cutoff:.2f} Å; SchNet 32 features × 2 interactions, float32",
              "connected_sets": {str(n): int(len(s)) for n, s in sets.items()}, "seconds": seconds,
              "ratios": {"gnn_lrp_over_mbe": seconds["gnn_lrp_order3_gi"] / seconds["mbe_order3"],
                         "mbe_over_energy_and_forces": seconds["mbe_order3"] / seconds["energy_and_forces"]},
              "goal_seconds": 2.0}
    path = Path(args.out) / f"mbe_speed_{result['machine']['backend']}.json"
    write_json(path, result)
    print(json.dumps(result["seconds"] | result["ratios"] | {"connected_sets": result["connected_sets"]}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
