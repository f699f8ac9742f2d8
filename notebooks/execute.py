"""Execute notebooks in place, as CI checks them: cells tagged `nbval-skip` (GPU / real-checkpoint
cells) are left unexecuted, every other cell runs and stores its outputs. Prints each notebook's
wall time. Usage: python notebooks/execute.py notebooks/*.ipynb (what `make run-notebooks` runs)."""
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


class _SkippingClient(NotebookClient):
    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if "nbval-skip" in cell.metadata.get("tags", []):
            cell.outputs, cell.execution_count = [], None
            return cell
        return await super().async_execute_cell(cell, cell_index, execution_count, store_history)


def main(paths) -> int:
    total = 0.0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        _SkippingClient(nb, timeout=600, kernel_name="python3",
                        resources={"metadata": {"path": str(Path(path).parent)}}).execute()
        nbformat.write(nb, path)
        took = time.perf_counter() - start
        total += took
        print(f"{path}: {took:.1f} s", flush=True)
    print(f"total: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
