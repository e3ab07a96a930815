"""Stage 0: raw logs -> timelines. `python pipelines/prepare.py data=<name> [data.raw_dir=...]`."""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from common import ensure_data, log


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = ensure_data(cfg)
    meta = json.loads((out_dir / "meta.json").read_text())
    log.info(
        "%s: %d users, %d items, %d events; dropped %s -> %s",
        meta["dataset"], meta["users"], meta["items"], meta["events"], meta["dropped"], out_dir,
    )


if __name__ == "__main__":
    main()
