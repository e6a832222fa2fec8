"""Attribution speed on the published GNN-LRP reference geometry (125 CG-methane beads).

Frame: ../shared/data/cg_methane_frame/bonneau_cg_methane_frame0.npz (Bonneau et al. 2024,
box 20.77 × 20.41 × 17.97 Å) when present, else a synthetic frame of the same shape
(125 beads, same box, mean degree ≈ 9 within 5 Å). Models, side by side at one width: SchNet,
PaiNN and NequIP (lmax 2, the size of the published code's SO3net), T = 3 interactions, 128
features (per l), 5 Å cutoff, random weights (speed does not depend on training).

Measures, in one run, for each model:
* one jitted energy + forces evaluation (the unit of the ratios);
* all walk relevances with jaxrel (``all_walk_relevances``: the walk-chain engine,
  :mod:`jaxrel.relevance.chain`, per-step Jacobian blocks, no per-walk pass);
* the complete 1-, 2- and 3-body decomposition with jaxrel (walk chain + segment sum per atom
  set), and side by side the previous method (one masked backward pass per group of packed
  subsets, :func:`jaxrel.relevance.subset_relevance`, then Möbius inversion) with the largest
  difference between the two;
* the exact top-100 walks (the walk chain and a partial sort), checked against all walks;
  the masked-pass decomposition of the ``--slow-models`` (default NequIP) is timed only once;
* the naive method of the published reference code — one masked forward + backward
  per walk — timed on a random sample of walks and extrapolated to all walks (said so
  in the JSON);
* compiled peak temporary memory (XLA memory analysis) of the walk chain for this frame.

    python benchmarks/relevance_speed.py [--sample 200] [--repeats 3] [--models schnet painn nequip]
        [--slow-models nequip]

Writes benchmarks/results/relevance_speed_<backend>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrel.files import write_json
from jaxrel.graph import build_graphs
from jaxrel.models import ModelConfig, Potential
from jaxrel.nn import RULES
from jaxrel.relevance import (all_walk_relevances, connected_sets, enumerate_walks, mobius_inversion, nbody_decomposition, subset_relevance,
                              top_k_walks, walk_relevance)
from jaxrel.relevance.chain import chain_relevance, chain_topology

ROOT = Path(__file__).resolve().parents[1]
BOX = np.array([20.768, 20.41, 17.969])
PUBLISHED = {"gpu": "RTX 3090", "seconds_per_frame": 25 * 60, "walks_per_second": 83}

from train_rmd17 import machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def reference_frame() -> tuple[np.ndarray, np.ndarray, str]:
    path = Path(os.environ.get("JAXREL_DATA", ROOT.parent / "shared" / "data")) / \
        "cg_methane_frame" / "bonneau_cg_methane_frame0.npz"
    if path.is_file():
        data = np.load(path)
        return data["coords"], np.asarray(data["cell"]), f"published frame {path.name}"
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = (grid + 0.5 + 0.15 * rng.normal(size=grid.shape)) * BOX / 5
    return coords % BOX, np.diag(BOX), "synthetic 125-bead frame (reference frame not found)"


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Shortest wall time of ``repeats`` calls, and the last call's result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


# Same width and depth for every model: 128 features (per l for NequIP), 3 interactions, 5 Å;
# NequIP with lmax 2 is the size of the SO3net of the published GNN-LRP code (Bonneau et al. 2024).
MODELS = {"schnet": {}, "painn": {}, "nequip": {"lmax": 2}}
# walk steps per chunk of the chain's block product
CHUNK = {"schnet": 256, "painn": 256, "nequip": 256}
# masks per vmapped backward of the masked passes: NequIP's per-edge tensor-product activations are ~50× SchNet's
MASK_CHUNK = {"schnet": 256, "painn": 256, "nequip": 16}

def measure(model: str, graph, args) -> dict:
    """Every timing of one model on the frame (see the module docstring)."""
    config = ModelConfig(model, (1,), cutoff=5.0, n_features=128, n_interactions=3, n_rbf=20, **MODELS[model])
    potential, params = Potential.create(config, seed=0)
    chunk = CHUNK[model]

    energy_and_forces = jax.jit(potential.energy_and_forces)
    jax.block_until_ready(energy_and_forces(params, graph))
    ef_seconds, _ = best_of(lambda: jax.block_until_ready(energy_and_forces(params, graph)), max(args.repeats, 10))

    start = time.perf_counter()
    walks = enumerate_walks(graph, 3)
    enumerate_seconds = time.perf_counter() - start
    slow = model in args.slow_models
    all_walk_relevances(potential, params, graph, chunk_size=chunk)  # compile
    walk_seconds, (chain_walks, full_r) = best_of(
        lambda: all_walk_relevances(potential, params, graph, chunk_size=chunk), args.repeats)
    assert len(chain_walks) == len(walks)

    first = time.perf_counter()
    nb = nbody_decomposition(potential, params, graph, max_order=3, chunk_size=chunk)
    first = time.perf_counter() - first
    nbody_seconds, _ = best_of(lambda: nbody_decomposition(potential, params, graph, max_order=3, chunk_size=chunk),
                               args.repeats)
    sets = connected_sets(graph, 3)

    def masked_passes():
        values = {n: subset_relevance(potential, params, graph, s, chunk_size=MASK_CHUNK[model]) for n, s in sets.items()}
        return mobius_inversion(sets, values, graph.n_atoms)

    masked_passes()
    masked_seconds, masked_terms = best_of(masked_passes, 1 if slow else args.repeats)
    masked_difference = max(float(np.abs(masked_terms[n] - nb.orders[n].relevance).max()) for n in sets)

    top = dict(k=100, chunk_size=chunk)
    top_k_walks(potential, params, graph, **top)  # compile
    top_seconds, (_, top_r, top_stats) = best_of(
        lambda: top_k_walks(potential, params, graph, **top, return_stats=True), args.repeats)
    kth = np.sort(np.abs(full_r))[-100]
    top_k = {"k": 100, "seconds": top_seconds, **top_stats,
             "equals_full_enumeration": bool(np.all(np.abs(top_r) >= kth * (1 - 1e-5)))}

    # Naive: one masked forward + backward per walk, as the published reference code does.
    h_in = potential.embedding(params, graph)

    def masked(h, mask):  # h ← m ⊙ h + (1 − m) ⊙ sg(h) (Schnake et al. 2022)
        return jax.tree.map(lambda x: mask.reshape(mask.shape + (1,) * (x.ndim - 1)) * x
                            + (1 - mask.reshape(mask.shape + (1,) * (x.ndim - 1))) * jax.lax.stop_gradient(x), h)

    @jax.jit
    def one_walk(walk):
        masks = jnp.zeros((4, graph.n_atoms), h_in.dtype).at[jnp.arange(4), walk].set(1.0)

        def energy(h):  # the whole forward pass per walk, as in the published code
            layers, energy_readout = potential.layer_functions(params, graph, "gi")
            h = masked(h, masks[0])
            for t, layer in enumerate(layers):
                h = masked(layer(h), masks[t + 1])
            return energy_readout(h).sum()

        return jnp.sum(h_in[walk[0]] * jax.grad(energy)(h_in)[walk[0]])

    sample = walks[np.random.default_rng(0).choice(len(walks), args.sample, replace=False)]
    one_walk(jnp.asarray(sample[0])).block_until_ready()
    start = time.perf_counter()
    naive = [float(one_walk(jnp.asarray(w))) for w in sample]
    naive_seconds = time.perf_counter() - start
    naive_rate = args.sample / naive_seconds
    fast = walk_relevance(potential, params, graph, sample, chunk_size=chunk)
    agreement = float(np.max(np.abs(np.array(naive) - fast)) / np.max(np.abs(fast)))

    topology, _ = chain_topology(graph, 3)
    analysis = chain_relevance.lower(potential, params, graph, topology, RULES["gi"], chunk).compile().memory_analysis()
    memory = None if analysis is None else {"temp_bytes": int(analysis.temp_size_in_bytes),
                                            "output_bytes": int(analysis.output_size_in_bytes)}

    naive_full = len(walks) / naive_rate
    all_walks_seconds = walk_seconds
    return {
        "model": config.to_dict(), "rules": "gi", "chunk_size": chunk,
        "n_parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "energy_and_forces_seconds": ef_seconds,
        "n_walks": int(len(walks)),
        "walk_enumeration": {"seconds": all_walks_seconds, "walks_per_second": len(walks) / all_walks_seconds,
                             "ratio_to_energy_and_forces": all_walks_seconds / ef_seconds,
                             "timing": f"all_walk_relevances (walks and relevances), best of {args.repeats} after a "
                                       "compiling call", "sorted_enumeration_seconds": enumerate_seconds},
        "nbody_decomposition": {
            "max_order": 3, "seconds": nbody_seconds, "seconds_first_call_with_compile": first,
            "ratio_to_energy_and_forces": nbody_seconds / ef_seconds,
            "n_terms": {str(k): int(len(t.atoms)) for k, t in nb.orders.items()},
            "conservation": {"energy_eV": nb.energy, "total_relevance_eV": nb.total,
                             "residual_order_4_eV": nb.residual}},
        "nbody_by_masked_passes": {
            "method": "packed subset masks, one masked backward per group (subset_relevance) + Möbius inversion",
            "seconds": masked_seconds, "ratio_to_energy_and_forces": masked_seconds / ef_seconds,
            "speedup_of_walk_chain": masked_seconds / nbody_seconds,
            "max_abs_difference_eV": masked_difference},
        "top_k_walks": top_k,
        "naive_one_pass_per_walk": {
            "measured_walks": args.sample, "seconds_measured": naive_seconds,
            "walks_per_second": naive_rate, "extrapolated_seconds_all_walks": naive_full,
            "extrapolated": True, "max_relative_difference_to_jaxrel": agreement},
        "speedup": {"walks_vs_naive": (len(walks) / all_walks_seconds) / naive_rate,
                    "nbody_vs_naive_full_enumeration": naive_full / nbody_seconds},
        "walk_chain_compiled_memory": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=200, help="walks timed with the naive method")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--slow-models", nargs="*", choices=list(MODELS), default=["nequip"],
                        help="models whose masked-pass decomposition is timed once (default: nequip)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    coords, cell, source = reference_frame()
    graph = build_graphs(coords, np.ones(len(coords), np.int32), 5.0, cell=cell).frame(0)
    n_edges = int(graph.edge_mask.sum())
    models = {}
    for model in args.models:
        models[model] = measure(model, graph, args)
        print(model, json.dumps({k: models[model][k] for k in (
            "energy_and_forces_seconds", "walk_enumeration", "nbody_decomposition", "top_k_walks",
            "naive_one_pass_per_walk")}, indent=1))
    result = {
        "benchmark": "relevance_speed",
        "command": "python benchmarks/relevance_speed.py --models " + " ".join(args.models),
        "machine": machine(), "frame": source, "n_atoms": int(graph.node_mask.sum()),
        "n_directed_edges": n_edges, "mean_degree": n_edges / int(graph.node_mask.sum()),
        "published_reference": PUBLISHED, "models": models,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"relevance_speed_{jax.default_backend()}.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
