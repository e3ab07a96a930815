"""The pretrained encoder as a self-contained artifact: safetensors weights plus its config as JSON.

Finetuning and outside users load it without Lightning, without unpickling anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file

from userllm.encoder.model import EncoderConfig, UserEncoder
from userllm.io import atomic_path, write_json

WEIGHTS = "encoder.safetensors"
CONFIG = "encoder.json"


def save_encoder(encoder: UserEncoder, folder: Path) -> Path:
    """Write the weights (temp file, then rename) and then the config that marks them complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(folder / CONFIG, asdict(encoder.config))
    return folder


def load_encoder(folder: Path) -> UserEncoder:
    """Rebuild the encoder saved by `save_encoder`."""
    folder = Path(folder)
    if not (folder / CONFIG).exists() or not (folder / WEIGHTS).exists():
        raise FileNotFoundError(
            f"no pretrained encoder in {folder} (expected {CONFIG} and {WEIGHTS}): run `make pretrain` "
            "first, or set encoder.init=random"
        )
    encoder = UserEncoder(EncoderConfig(**json.loads((folder / CONFIG).read_text())))
    encoder.load_state_dict(load_file(str(folder / WEIGHTS)))
    return encoder
