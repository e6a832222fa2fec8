"""Cost of the local chemical potential (Schütt et al. 2018, arXiv:1806.10349) on a 50 × 50 × 50 grid.

One rMD17 molecule (frame 0 of the test file, default ethanol), an H probe, a grid of exactly
50 points per axis over the molecule's bounding box plus 3 Å (the step per axis follows), and
a SchNet with 64 features, 3 interactions, cutoff 5 Å, 20 radial basis functions, float32. The
parameters are freshly initialised, not trained: the cost does not depend on their values.
Timed in one process: the first call of :func:`jaxrel.analysis.chempot.local_chemical_potential`
(compilation included) and the median of ``--repeats`` later calls (compiled once; excluded).

Results: benchmarks/results/chempot_speed_<backend>.json (earlier molecules are kept).

    python benchmarks/chempot_speed.py [--molecule ethanol] [--chunk-size 512] [--repeats 2]

Data: $JAXREL_DATA or ../shared/data (rmd17/ inside it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_rmd17 import keep_earlier, machine  # noqa: E402

from jaxrel.analysis.chempot import local_chemical_potential  # noqa: E402
from jaxrel.data import read_frames  # noqa: E402
from jaxrel.files import write_json  # noqa: E402
from jaxrel.models import ModelConfig, Potential  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRID, PADDING = 50, 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", default="ethanol")
    parser.add_argument("--chunk-size", type=int, default=512, help="grid points per vmapped call (default 512)")
    parser.add_argument("--repeats", type=int, default=2, help="compiled calls timed after the first (default 2)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    data = Path(os.environ.get("JAXREL_DATA", ROOT.parent / "shared" / "data")) / "rmd17"
    path = data / f"rmd17_{args.molecule}_test_01.npz"
    if not path.is_file():
        raise SystemExit(f"{path} not found; set JAXREL_DATA to the shared data folder (rmd17/ inside it)")
    frames = read_frames(path)
    positions, species = frames.positions[0], frames.species
    config = ModelConfig("schnet", tuple(sorted(set(species.tolist()))), cutoff=5.0, n_features=64,
                         n_interactions=3, n_rbf=20, dtype="float32")
    potential, params = Potential.create(config, seed=0)
    spacing = tuple((np.ptp(positions, axis=0) + 2 * PADDING) / (GRID - 1))

    def run():
        return local_chemical_potential(potential, params, positions, species, "H", spacing=spacing,
                                        padding=PADDING, chunk_size=args.chunk_size)

    start = time.perf_counter()
    first = run()
    with_compilation = time.perf_counter() - start
    assert first.values.shape == (GRID,) * 3, first.values.shape
    compiled = statistics.median(run().seconds for _ in range(args.repeats))
    summary = first.summary()
    entry = {"n_atoms": int(len(species)), "n_points": summary["n_points"], "grid_shape": summary["grid_shape"],
             "spacing_A": summary["spacing_A"], "chunk_size": args.chunk_size,
             "seconds_including_compilation": with_compilation, "seconds_excluding_compilation": compiled,
             "compilation_seconds": with_compilation - compiled,
             "points_per_second": summary["n_points"] / compiled,
             "phi_range_eV": [summary["min"]["phi_eV"], summary["max"]["phi_eV"]]}
    result = {"machine": machine(), "command": "python benchmarks/chempot_speed.py " + " ".join(sys.argv[1:]),
              "model": "SchNet, 64 features × 3 interactions, cutoff 5 Å, 20 RBF, float32, untrained (seed 0)",
              "probe": "H", "grid": f"{GRID} × {GRID} × {GRID} over the bounding box + {PADDING} Å",
              "data": "rmd17_<molecule>_test_01.npz, frame 0", "runs": {args.molecule: entry}}
    out = Path(args.out) / f"chempot_speed_{result['machine']['backend']}.json"
    result = keep_earlier(out, result, "runs", ("model", "probe", "grid"))
    write_json(out, result)
    print(json.dumps({args.molecule: entry}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
