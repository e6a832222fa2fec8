"""Cost of recording GNN-LRP explanations inside the MD loop (``jaxrel md --explain-every K``).

Ethanol (rMD17, rmd17_ethanol_test_01 frame 0: 9 atoms, free space) with an untrained SchNet of
the benchmark size (64 features × 3 interactions, cutoff 5 Å, 20 radial basis functions,
float32, seed 0; the cost does not depend on the weights), 4 replicas, Nosé–Hoover chain NVT at
500 K, dt 0.5 fs, a frame every 100 steps, 20,000 steps. In one process: MD without
explanations, and with a :class:`jaxrel.md.ExplanationRecorder` (GNN-LRP, GI rule, body orders
1–2, top 5 pairs) every 1000 and every 100 steps. Speed is ``Trajectory.steps_per_second``
(integration steps per wall-clock second, replicas advancing together; compilation excluded;
the part of each ``on_block`` call that the next block does not cover included). A warm-up run
with explanations compiles everything first; then every setting runs ``--repeats`` times,
interleaved, and the median counts. Overhead = 100 × (1 − steps/s with / steps/s without) %.

Every pair of ethanol's atoms is within the cutoff at any sensible geometry (72 directed
edges), so the cost of a step and of a decomposition does not depend on where the atoms are.
The untrained model has no repulsive core; its replicas happened to stay stable for the 10 ps
(the JSON records the driver's verdict for every run), so every record explains 4 replicas.

    python benchmarks/md_explain_overhead.py [--steps 20000] [--repeats 2]

Data: $JAXREL_DATA or ../shared/data (rmd17/ inside it). Writes
benchmarks/results/md_explain_overhead_<backend>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from md_stability import data_dir  # noqa: E402
from train_rmd17 import machine  # noqa: E402

from jaxrel.data import read_frames  # noqa: E402
from jaxrel.md import ExplanationRecorder, MDConfig, simulate  # noqa: E402
from jaxrel.models import ModelConfig, Potential  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPLICAS, TEMPERATURE_K, DT_FS, LOG_EVERY, ORDER, TOP = 4, 500.0, 0.5, 100, 2, 5
EVERY = (None, 1000, 100)
"""Explanation intervals measured, steps (None: no explanation)."""


def run(potential, params, frames, n_steps: int, every: int | None) -> dict:
    """One MD run of :data:`REPLICAS` replicas of frame 0, explained every ``every`` steps."""
    config = MDConfig("nvt-nh", dt_fs=DT_FS, temperature_K=TEMPERATURE_K, n_steps=n_steps, log_every=LOG_EVERY)
    recorder = None if every is None else ExplanationRecorder(potential, params, frames.species, config=config,
                                                              every=every, order=ORDER, top=TOP)
    positions = np.repeat(frames.positions[:1], REPLICAS, axis=0)
    traj = simulate(potential, params, positions, frames.species, config=config, progress=False, on_block=recorder)
    result = {"steps_per_second": traj.steps_per_second, "timed_seconds": n_steps / traj.steps_per_second,
              "stable": bool(np.isnan(traj.unstable_time_ps).all()), "stop_reason": traj.stop_reason}
    if recorder is not None:
        records = recorder.explanations
        result |= {"n_records": len(recorder.records), "n_replica_records": len(records.time_ps),
                   "recorder_seconds": recorder.seconds,
                   "recorder_seconds_per_record": recorder.seconds / max(len(recorder.records), 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000, help="integration steps per run (default 20000)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, interleaved (default 2)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    frames = read_frames(data_dir() / "rmd17" / "rmd17_ethanol_test_01.npz")
    config = ModelConfig("schnet", tuple(sorted(set(frames.species.tolist()))), cutoff=5.0, n_features=64,
                         n_interactions=3, n_rbf=20, dtype="float32")
    potential, params = Potential.create(config, seed=0)
    load_before = os.getloadavg()
    run(potential, params, frames, 10 * LOG_EVERY, LOG_EVERY)   # warm-up: compiles MD and explanation
    runs = {str(every): [] for every in EVERY}
    for _ in range(args.repeats):
        for every in EVERY:
            runs[str(every)].append(run(potential, params, frames, args.steps, every))
            print(f"explain every {every}: {runs[str(every)][-1]['steps_per_second']:.0f} steps/s", flush=True)
    load_after = os.getloadavg()
    speed = {key: statistics.median(r["steps_per_second"] for r in results) for key, results in runs.items()}
    baseline = speed["None"]
    result = {
        "benchmark": "md_explain_overhead", "machine": machine(),
        "command": "python benchmarks/md_explain_overhead.py " + " ".join(sys.argv[1:]),
        "load_average_1_5_15min_before_after": [list(load_before), list(load_after)],
        "system": "ethanol, rmd17_ethanol_test_01 frame 0, 9 atoms, free space",
        "model": "SchNet, 64 features × 3 interactions, cutoff 5 Å, 20 RBF, float32, untrained (seed 0)",
        "md": {"ensemble": "nvt-nh", "temperature_K": TEMPERATURE_K, "dt_fs": DT_FS, "log_every": LOG_EVERY,
               "n_steps": args.steps, "replicas": REPLICAS, "masses": "standard atomic masses"},
        "explanation": {"method": "GNN-LRP (Schnake et al. 2022, arXiv:2006.03589), GI rule", "order": ORDER,
                        "top": TOP},
        "repeats": args.repeats,
        "steps_per_second": {"none" if key == "None" else f"every_{key}": value for key, value in speed.items()},
        "overhead_percent": {f"every_{every}": 100.0 * (1.0 - speed[str(every)] / baseline)
                             for every in EVERY if every is not None},
        "runs": {"none" if key == "None" else f"every_{key}": results for key, results in runs.items()},
        "notes": "steps/s: integration steps per wall-clock second, replicas together, compilation excluded, "
                 "median over the repeats; overhead = 1 − with / without. timed_seconds = n_steps / steps/s; "
                 "recorder_seconds: time inside the recorder (all records, the initial one outside the timed "
                 "loop included): timed_seconds − the baseline's, against it, shows how much of it the next "
                 "MD block hid",
    }
    out = Path(args.out) / f"md_explain_overhead_{result['machine']['backend']}.json"
    out.write_text(json.dumps(result, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
    print(json.dumps({k: result[k] for k in ("steps_per_second", "overhead_percent")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
