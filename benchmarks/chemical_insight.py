"""Chemical insight from models of multi-element molecules (Schütt et al. 2018, arXiv:1806.10349;
Esders et al. 2025, arXiv:2410.13833), on G2 molecules labelled with GFN2-xTB.

1. Data: ``jaxrel generate xtb --molecules g2`` (every closed-shell G2 molecule, rattled at
   ``--temperature``), timed, with its size and elements.
2. Models (SchNet, 64 features, 3 interactions, 5 Å, the same split of all frames):
   the HOMO–LUMO gap with each readout (sum, mean, softmax), the dipole from latent charges,
   and the energy (with forces) as an ensemble of ``--seeds`` seeds, each within ``--minutes``
   of training (the ensemble: ``--seeds`` × that).
3. :func:`jaxrel.analysis.chemical_insight` of every model on the test frames: locality (how many
   atoms carry 90 % of Σ|R_i|, R_i the GI relevance of the walks that start at atom i, as a share
   of the atoms), and the dipole model's latent charges and the energy model's atomwise energies
   (minus their species shift) against the xTB partial charges, per element.
4. Element embeddings of the energy ensemble: PCA, Spearman ρ with group and period, per seed.
5. The local chemical potential of ethanol (G2 ``CH3CH2OH``) for an H probe with the energy
   model (seed 0): cube file, figures, seconds.

Writes ``benchmarks/results/chemical_insight_cpu.json`` and figures in
``benchmarks/results/chemical_insight/``. Data and models go to ``runs/chemical_insight/`` and are
reused unless ``--retrain``.

    .venv/bin/python benchmarks/chemical_insight.py [--frames-per-molecule 20] [--temperature 1000]
        [--minutes 4] [--seeds 3] [--retrain]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
from train_rmd17 import machine  # noqa: E402

from jaxrel.analysis import (atomwise_comparison, chemical_insight, embedding_pca_seeds,  # noqa: E402
                             plot_element_embeddings, plot_locality, plot_per_species)
from jaxrel.analysis.chempot import local_chemical_potential, write_chemical_potential  # noqa: E402
from jaxrel.analysis.numerics import species_label  # noqa: E402
from jaxrel.checkpoint import load_models  # noqa: E402
from jaxrel.data import generate_xtb, read_molecules, save_xtb  # noqa: E402
from jaxrel.files import write_json  # noqa: E402
from jaxrel.train import select_frames, train_potential, training_split  # noqa: E402

RUNS = ROOT / "runs" / "chemical_insight"
OUT = ROOT / "benchmarks" / "results"
FIGURES = OUT / "chemical_insight"
ARCH = dict(model="schnet", cutoff=5.0, n_features=64, n_interactions=3, n_rbf=20, batch_size=16, seed=0)
MODELS = {"gap_sum": ("gap", "sum"), "gap_mean": ("gap", "mean"), "gap_softmax": ("gap", "softmax"),
          "dipole": ("dipole", "sum"), "energy": ("energy", "sum")}


def data_set(args) -> tuple[Path, dict]:
    """Generate the data (every run: it takes seconds and is bit-identical for a seed, so models
    trained on an earlier run's file see the same frames)."""
    path = RUNS / f"g2_xtb_T{args.temperature:g}_n{args.frames_per_molecule}.npz"
    data = generate_xtb("g2", frames_per_molecule=args.frames_per_molecule, temperature=args.temperature,
                        seed=0, progress=True)
    if path.is_file():
        with np.load(path) as earlier:
            if not all(np.array_equal(earlier[k], getattr(data, k)) for k in ("coords", "energies", "gaps")):
                raise RuntimeError(f"{path} differs from this run's data; delete it and pass --retrain")
    save_xtb(data, path)
    info = {"seconds": data.seconds, "n_skipped_open_shell": data.n_skipped, "n_scf_failures": data.n_scf_failures}
    molecules = read_molecules(path)
    elements = sorted({int(z) for f in molecules for z in f.species})
    return path, {**info, "file": str(path.relative_to(ROOT)), "megabytes": path.stat().st_size / 1e6,
                  "n_frames": sum(len(f) for f in molecules), "n_molecules": len(molecules),
                  "elements": [species_label((z,)) for z in elements], "n_elements": len(elements),
                  "temperature_K": args.temperature, "frames_per_molecule": args.frames_per_molecule,
                  "command": (f"jaxrel generate xtb --molecules g2 --frames-per-molecule {args.frames_per_molecule} "
                              f"--temperature {args.temperature:g} --seed 0")}


def train(name: str, data: Path, args) -> dict:
    target, readout = MODELS[name]
    out = RUNS / name
    seeds = args.seeds if target == "energy" else 1
    if (out / "metrics.json").is_file() and not args.retrain:
        import json
        return json.loads((out / "metrics.json").read_text())
    return train_potential(data, out, target=target, readout=readout, minutes=args.minutes * seeds, seeds=seeds,
                           overwrite=True, **ARCH)


def test_frames(data: Path):
    """The test frames of train_potential's split (training_split with the same seed and default sizes)."""
    molecules = read_molecules(data)
    n = sum(len(f) for f in molecules)
    return select_frames(molecules, training_split(n, seed=ARCH["seed"]).test)


def insight(models: dict, frames) -> dict:
    """Locality per model and, for the dipole and energy models, per-element charges (chemical_insight)."""
    results = {name: chemical_insight(*models[name][0][:2], frames) for name in MODELS}
    plot_locality({name: r.share_of_atoms for name, r in results.items()}, FIGURES / "locality.png")
    for name in ("dipole", "energy"):
        r = results[name]
        plot_per_species(r.values, r.reference, r.species, FIGURES / f"charges_{name}.png",
                         xlabel="GFN2-xTB partial charge (e)", ylabel=r.quantity)
    out = {name: r.summary() for name, r in results.items()}
    dipole = results["dipole"]
    out["dipole"]["charges_all_atoms"] = atomwise_comparison(dipole.values, dipole.reference)._asdict()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-per-molecule", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=1000.0)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    FIGURES.mkdir(parents=True, exist_ok=True)
    data, data_info = data_set(args)
    print("data:", {k: v for k, v in data_info.items() if k != "command"}, flush=True)
    metrics = {name: train(name, data, args) for name in MODELS}
    models = {name: load_models(RUNS / name / ("model" if MODELS[name][0] != "energy" or args.seeds == 1 else ""))
              for name in MODELS}
    frames = test_frames(data)
    result = {"machine": machine(), "command": " ".join(sys.argv), "data": data_info,
              "architecture": {k: v for k, v in ARCH.items() if k != "seed"}, "minutes_per_model": args.minutes}
    result["test_errors"] = {name: (m["test"] if "test" in m else {"mean": m["test_mean"], "std": m["test_std"]})
                             for name, m in metrics.items()}
    result["training"] = {name: m["training"] for name, m in metrics.items()}
    result["insight"] = insight(models, frames)
    pca = embedding_pca_seeds([m[:2] for m in models["energy"]])
    plot_element_embeddings(pca.results[0], FIGURES / "element_embeddings.png")
    result["element_embeddings"] = {
        "species": [species_label((int(z),)) for z in pca.results[0].species],
        "explained_variance_ratio_seed0": pca.results[0].explained_variance_ratio.tolist(),
        "group_rho_per_seed": pca.group.per_seed.tolist(), "period_rho_per_seed": pca.period.per_seed.tolist(),
        "group_max_abs_rho": {"mean": pca.group.max_abs_mean, "std": pca.group.max_abs_std},
        "period_max_abs_rho": {"mean": pca.period.max_abs_mean, "std": pca.period.max_abs_std}}
    ethanol = next(f for f in read_molecules(data) if f.name == "CH3CH2OH")
    potential, params, _ = models["energy"][0]
    start = time.perf_counter()
    chempot = local_chemical_potential(potential, params, ethanol.positions[0], ethanol.species, "H")
    seconds = time.perf_counter() - start
    write_chemical_potential(chempot, FIGURES, metadata={"molecule": "CH3CH2OH (G2, frame 0 of the data)"})
    result["chemical_potential"] = {"molecule": "CH3CH2OH", "probe": "H", "grid": list(chempot.values.shape),
                                    "seconds_with_compilation": seconds, **chempot.summary()}
    write_json(OUT / "chemical_insight_cpu.json", result)
    print(f"wrote {OUT / 'chemical_insight_cpu.json'}")


if __name__ == "__main__":
    main()
