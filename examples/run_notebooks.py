"""Execute the example notebooks with this interpreter, and optionally save them with their outputs.

    python examples/run_notebooks.py                      # run every notebook; stop at the first error
    python examples/run_notebooks.py --save               # ... and write the outputs back into the files
    python examples/run_notebooks.py 01_quickstart.ipynb  # only some notebooks

The kernel is always the Python running this script (a throwaway ``python3`` kernel spec pointing at
``sys.executable``), so the notebooks see the same installed packages whatever kernels Jupyter knows.
Each notebook runs in a fresh temporary working directory. ``--save`` removes what changes from run to
run (stderr: progress bars and warnings; execution timestamps) so that re-running a notebook only shows
a diff where its results changed. ``tests/test_examples.py`` uses :func:`execute`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent
NOTEBOOKS = sorted(EXAMPLES.glob("[0-9][0-9]_*.ipynb"))

# The notebooks run offline and quietly; they set the same variables themselves for interactive use.
KERNEL_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _kernel_manager(spec_dir: Path) -> Any:
    """A kernel manager whose ``python3`` kernel is ``sys.executable -m ipykernel_launcher``."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kernel = spec_dir / "python3"
    kernel.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    (kernel / "kernel.json").write_text(json.dumps(spec))
    return KernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)])
    )


def execute(path: str | Path, *, workdir: str | Path | None = None, timeout: int = 900) -> Any:
    """Run every cell of the notebook at ``path``; returns the executed notebook (the file is untouched).

    A cell that raises stops the run with ``nbclient.exceptions.CellExecutionError`` naming the cell.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in KERNEL_ENV.items()}}
    with tempfile.TemporaryDirectory(prefix="mac-nb-") as tmp:
        run_dir = Path(workdir) if workdir is not None else Path(tmp) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        client = NotebookClient(
            nb,
            km=_kernel_manager(Path(tmp) / "kernels"),
            timeout=timeout,
            record_timing=False,
            resources={"metadata": {"path": str(run_dir)}},
        )
        client.execute(env=env, cwd=str(run_dir))
    return nb


def scrub(nb: Any) -> Any:
    """Drop what differs between identical runs: stderr streams and per-cell execution metadata."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook file names (default: every NN_*.ipynb)")
    parser.add_argument("--save", action="store_true", help="write the outputs back into the notebooks")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell (default: 900)")
    args = parser.parse_args(argv)

    import nbformat

    paths = [EXAMPLES / n for n in args.notebooks] if args.notebooks else NOTEBOOKS
    for path in paths:
        start = time.perf_counter()
        nb = execute(path, timeout=args.timeout)
        print(f"{path.name}: ran in {time.perf_counter() - start:.0f} s")
        if args.save:
            nbformat.write(scrub(nb), str(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
