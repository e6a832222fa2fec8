"""Execute the tutorial notebooks: in full mode (outputs stored in place, times recorded) or
in small mode (what the test suite runs: ``SMALL = True``, each under 90 s, compiled with
``JAX_DISABLE_MOST_OPTIMIZATIONS=1``).

Every notebook has one cell tagged ``parameters`` that sets ``SMALL = False``; small mode
appends ``SMALL = True`` to that cell before running (the papermill convention, without
papermill). Notebooks write their runs under ``$JAXREL_NOTEBOOK_OUT`` (default ``runs/``
beside the notebook) and read the shared data from ``$JAXREL_DATA`` (default
``../../shared/data`` from ``notebooks/``).

    python notebooks/execute.py                 # every notebook, full mode, outputs stored
    python notebooks/execute.py 02 --small      # one notebook in small mode, nothing stored

Full mode writes each executed notebook back in place and the seconds per notebook to
``benchmarks/results/notebooks_cpu.json`` (with machine, device and date).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOKS = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
"""The tutorials, in reading order."""


def _set_small(nb) -> None:
    """Append ``SMALL = True`` to the cell tagged ``parameters``; ValueError when there is none."""
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            cell.source = cell.source.rstrip() + "\nSMALL = True  # set by notebooks/execute.py --small"
            return
    raise ValueError("the notebook has no code cell tagged 'parameters' that sets SMALL; add one")


def execute_notebook(path: Path, *, small: bool, out_dir: Path, timeout: float = 1800.0):
    """Run one notebook top to bottom in a fresh kernel whose working folder is ``notebooks/``.

    Args:
        path: the ``.ipynb`` file.
        small: run with ``SMALL = True``.
        out_dir: ``$JAXREL_NOTEBOOK_OUT`` for the kernel (where the notebook writes its runs).
        timeout: seconds allowed per cell.
    Returns:
        ``(notebook, seconds)``: the executed notebook (nbformat node) and its wall time.
    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised (the message shows the traceback).
    """
    nb = nbformat.read(path, as_version=4)
    if small:
        _set_small(nb)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    # small mode is a smoke run, mostly XLA compilation: the kernel compiles with fewer optimisations
    fast_compile = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"} if small else {}
    with mock.patch.dict(os.environ, {"JAXREL_NOTEBOOK_OUT": str(out_dir),
                                      "MPLBACKEND": "module://matplotlib_inline.backend_inline", **fast_compile}):
        client.execute()
    return nb, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook name prefixes, e.g. 01 02 (default: all)")
    parser.add_argument("--small", action="store_true", help="small mode; the notebooks are not rewritten")
    args = parser.parse_args(argv)
    chosen = [p for p in NOTEBOOKS if not args.names or any(p.name.startswith(n) for n in args.names)]
    if not chosen:
        raise SystemExit(f"no notebook matches {args.names}; have {[p.name for p in NOTEBOOKS]}")
    seconds = {}
    for path in chosen:
        out = Path(tempfile.mkdtemp(prefix=f"jaxrel_{path.stem}_")) if args.small else HERE / "runs"
        nb, seconds[path.stem] = execute_notebook(path, small=args.small, out_dir=out)
        print(f"{path.name}: {seconds[path.stem]:.1f} s ({'small' if args.small else 'full'} mode)", flush=True)
        if not args.small:
            nbformat.write(nb, path)
    if args.small:
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_rmd17 import keep_earlier, machine

    from jaxrel.files import write_json

    results = ROOT / "benchmarks" / "results" / "notebooks_cpu.json"
    entries = {name: {"full_run_seconds": round(s, 1)} for name, s in seconds.items()}
    result = keep_earlier(results, {"machine": machine(), "command": "python notebooks/execute.py " +
                                    " ".join(args.names), "notebooks": entries}, "notebooks", ())
    write_json(results, result)
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
