"""The results report: `python pipelines/report.py` / `make report`.

Gathers the latest result of every stage for the configured dataset from `${paths.stage_dir}` into
`${report_file}`, with its plots in the folder of the same name beside it (see `userllm.report`).
Reads files only: no data, model or network needed.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

import common  # noqa: F401  (sets USERLLM_ROOT, which conf/paths resolves against)
from userllm.report import write_report


@hydra.main(config_path="../conf", config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report = write_report(Path(cfg.paths.stage_dir), Path(cfg.report_file), cfg.data.name)
    if cfg.print_report:
        print(report.read_text())
    print(f"report written to {report} (plots in {report.with_suffix('')}/)")


if __name__ == "__main__":
    main()
