"""The committed results: where they live, where and how the numbers were taken, and writing a table
as CSV and JSON. Shared by the bench and the evaluation (`eval.write_comparison`)."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import pandas as pd
import torch

from .utils import shipped_path

#: the committed benchmark results (results/ in a checkout, sparsevlm/results/ when installed)
RESULTS = shipped_path("results")


def machine(device, dtype, attn: str) -> dict:
    """Where and how the numbers were taken."""
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "attn_implementation": attn}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_results(table: pd.DataFrame, info: dict, path: Path, stem: str, log=print, **extra) -> None:
    """`table` as CSV and, with the machine (and any `extra` entries), as JSON."""
    path.mkdir(parents=True, exist_ok=True)
    table.to_csv(path / f"{stem}.csv")
    (path / f"{stem}.json").write_text(json.dumps({"machine": info, "results": json.loads(
        table.reset_index().to_json(orient="records")), **extra}, indent=2) + "\n")
    log(f"wrote {path / stem}.csv and .json")
