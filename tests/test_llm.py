"""The LLM integration on tiny random models of four families, with a word-level tokenizer built here.

Nothing is downloaded: configs, weights and tokenizer are made in code and each test takes seconds.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from userllm.llm import load as load_module
from userllm.llm.constrained import CatalogueTrie, constrained_generate
from userllm.llm.cross_attention import CrossAttentionDecoderLayer, add_cross_attention, find_decoder_layers
from userllm.llm.load import OFFLINE_DEFAULT_LLM, SMOLLM2_DIR, load_llm
from userllm.llm.prompts import build_prompt, history_as_text, task_instruction
from userllm.llm.soft_prompt import IGNORE_INDEX, prepend_user_tokens
from userllm.llm.strategies import apply_strategy

FAMILIES = ("llama", "qwen2", "gemma", "gpt2")
HIDDEN = 32
VOCAB = 64
SPECIAL = ["<pad>", "<unk>", "<eos>", "<|user|>", "<|assistant|>"]
WORDS = (
    "which genre appears most often in this user's history ? answer with the only . item will interact next "
    "its title comedy drama film noir science fiction horror action toy story heat rated"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
CATALOGUE = ["comedy", "drama", "film noir", "film", "science fiction", "horror"]


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(SPECIAL + sorted(set(WORDS)))}
    assert len(vocab) <= VOCAB
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.add_special_tokens(SPECIAL)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def make_model(family: str, seed: int = 0) -> nn.Module:
    """A 3-layer random model; ids match `make_tokenizer` (pad 0, eos 2)."""
    ids = {"vocab_size": VOCAB, "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": None}
    decoder = {
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    }
    config = {
        "llama": lambda: LlamaConfig(**ids, **decoder),
        "qwen2": lambda: Qwen2Config(**ids, **decoder),
        "gemma": lambda: GemmaConfig(**ids, **decoder, head_dim=HIDDEN // 4),
        "gpt2": lambda: GPT2Config(**ids, n_embd=HIDDEN, n_layer=3, n_head=4, n_positions=128),
    }[family]()
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def prompt_batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))


PROMPTS = ["toy story comedy", "which genre appears most often in this user's history ?", "heat drama action"]


def user_tokens(batch: int, num: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, num, HIDDEN, generator=torch.Generator().manual_seed(seed))


def open_gates(adapter, value: float = 1.0) -> None:
    with torch.no_grad():
        for gate in adapter.gates():
            gate.fill_(value)


def greedy(model, **inputs) -> torch.Tensor:
    """Five new tokens per row, KV cache on; no early EOS, so rows of a batch stay comparable."""
    return model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0, use_cache=True)


# ---------------------------------------------------------------- cross-attention


@pytest.mark.parametrize("family", FAMILIES)
def test_closed_gates_leave_logits_exactly_unchanged(family):
    model, tokenizer = make_model(family), make_tokenizer()
    batch = prompt_batch(tokenizer, PROMPTS)
    with torch.no_grad():
        reference = model(**batch).logits
        adapter = add_cross_attention(model, every=2, ffn_mult=2)
        # The last row has no valid user token: it must not turn into NaN behind a closed gate.
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
        with adapter.conditioned_on(user_tokens(3), mask):
            contextualised = model(**batch).logits
    assert adapter.layer_ids == [1]
    assert torch.equal(reference, contextualised)


def test_layer_choice_and_wrapping():
    model = make_model("llama")
    adapter = add_cross_attention(model, layers=[0, 2])
    stack = find_decoder_layers(model)
    assert [isinstance(layer, CrossAttentionDecoderLayer) for layer in stack] == [True, False, True]
    assert stack[0].self_attn is stack[0].layer.self_attn  # attribute lookups reach the original layer
    assert len(adapter.gates()) == 2 and all(gate.item() == 0 for gate in adapter.gates())
    assert {id(p) for p in adapter.parameters()} <= {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match="already"):
        add_cross_attention(model)
    with pytest.raises(ValueError, match="within"):
        add_cross_attention(make_model("llama"), layers=[3])
    with pytest.raises(RuntimeError, match="No user tokens"):
        model(input_ids=torch.tensor([[5, 6]]))


def test_find_decoder_layers_falls_back_to_the_longest_block_list():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
            self.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(4)])

    model = Odd()
    assert find_decoder_layers(model) is model.blocks


@pytest.mark.parametrize("family", FAMILIES)
def test_cross_attention_generate_on_a_padded_batch_matches_each_row_alone(family):
    model, tokenizer = make_model(family), make_tokenizer()
    adapter = add_cross_attention(model, every=1)
    open_gates(adapter)
    batch, tokens = prompt_batch(tokenizer, PROMPTS), user_tokens(3)
    with adapter.conditioned_on(tokens):
        batched = greedy(model, **batch)
        gated_logits = model(**batch).logits
        singles = []
        for row, text in enumerate(PROMPTS):
            with adapter.conditioned_on(tokens[row : row + 1]):
                single = greedy(model, **prompt_batch(tokenizer, [text]))
            singles.append(single[0, -5:])
    open_gates(adapter, 0.0)
    with adapter.conditioned_on(tokens):
        plain_logits = model(**batch).logits
    assert not torch.allclose(gated_logits, plain_logits)  # the open gates do change the model
    assert torch.equal(batched[:, -5:], torch.stack(singles))


# ---------------------------------------------------------------- soft prompt


def test_soft_prompt_places_user_tokens_before_the_first_real_token():
    model, tokenizer = make_model("llama"), make_tokenizer()
    tokenizer.padding_side = "left"
    left = prompt_batch(tokenizer, ["toy story comedy", "heat"])
    labels = left["input_ids"].clone()
    inputs = prepend_user_tokens(model, **left, user_tokens=user_tokens(2, num=2), labels=labels)
    assert inputs.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert inputs.position_ids[1, 2:].tolist() == [0, 1, 2]
    assert torch.equal(inputs.inputs_embeds[1, 2:4], user_tokens(2, num=2)[1])
    assert inputs.labels[1].tolist() == [labels[1, 0], labels[1, 1], IGNORE_INDEX, IGNORE_INDEX, labels[1, 2]]

    tokenizer.padding_side = "right"
    right = prompt_batch(tokenizer, ["toy story comedy", "heat"])
    inputs = prepend_user_tokens(model, **right, user_tokens=user_tokens(2, num=2))
    assert inputs.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert torch.equal(inputs.inputs_embeds[1, :2], user_tokens(2, num=2)[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_soft_prompt_generate_on_a_padded_batch_matches_each_row_alone(family):
    model, tokenizer = make_model(family), make_tokenizer()
    tokens = user_tokens(3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    inputs = prepend_user_tokens(model, **prompt_batch(tokenizer, PROMPTS), user_tokens=tokens, user_mask=mask)
    batched = greedy(model, **inputs.as_kwargs())
    for row, text in enumerate(PROMPTS):
        single_inputs = prepend_user_tokens(
            model, **prompt_batch(tokenizer, [text]), user_tokens=tokens[row : row + 1], user_mask=mask[row : row + 1]
        )
        single = greedy(model, **single_inputs.as_kwargs())
        assert torch.equal(batched[row], single[0]), (row, batched[row], single[0])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_soft_prompt_forward_on_a_padded_batch_matches_each_row_alone(family):
    model, tokenizer = make_model(family), make_tokenizer()
    tokens = user_tokens(3)
    with torch.no_grad():
        inputs = prepend_user_tokens(model, **prompt_batch(tokenizer, PROMPTS), user_tokens=tokens)
        batched = model(**inputs.as_kwargs())
        for row, text in enumerate(PROMPTS):
            single = prepend_user_tokens(model, **prompt_batch(tokenizer, [text]), user_tokens=tokens[row : row + 1])
            logits = model(**single.as_kwargs()).logits[0]
            torch.testing.assert_close(batched.logits[row, -logits.shape[0] :], logits, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- strategies


class TinyEncoder(nn.Module):
    """Stand-in for the user encoder: item ids -> per-event vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 16)
        self.mix = nn.Linear(16, 16)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.mix(self.embed(items))


LORA = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def contextualised_llama(gate: float):
    model = make_model("llama")
    adapter = add_cross_attention(model, every=2, gate_init=gate)
    return model, adapter, TinyEncoder(), nn.Linear(16, HIDDEN)


def train_step(llm, adapter, encoder, projector) -> None:
    trainable = [p for module in (llm, encoder, projector) for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    input_ids = torch.randint(5, 40, (2, 6))
    with adapter.conditioned_on(projector(encoder(torch.randint(0, 10, (2, 3))))):
        llm(input_ids=input_ids, labels=input_ids).loss.backward()
    optimizer.step()


@pytest.mark.parametrize("strategy", ["full", "lora", "enc", "proj"])
def test_strategy_trains_exactly_its_parameters(strategy):
    model, adapter, encoder, projector = contextualised_llama(gate=0.5)
    llm = apply_strategy(strategy, model, encoder, [adapter, projector], lora=LORA)
    new_ids = {id(p) for module in (adapter, projector) for p in module.parameters()}
    llm_names = {name for name, p in llm.named_parameters() if id(p) not in new_ids}
    llm_trainable = {name for name, p in llm.named_parameters() if p.requires_grad and id(p) not in new_ids}
    expected_llm = {
        "full": llm_names,
        "lora": {name for name in llm_names if "lora_" in name},
        "enc": set(),
        "proj": set(),
    }[strategy]
    assert llm_trainable == expected_llm
    if strategy == "lora":
        assert expected_llm and all(("q_proj" in n or "v_proj" in n) for n in expected_llm)
    assert all(p.requires_grad for module in (adapter, projector) for p in module.parameters())
    assert all(p.requires_grad == (strategy != "proj") for p in encoder.parameters())

    named = {
        f"{prefix}.{name}": param
        for prefix, module in (("llm", llm), ("enc", encoder), ("proj", projector))
        for name, param in module.named_parameters()
    }
    before = {name: p.detach().clone() for name, p in named.items()}
    train_step(llm, adapter, encoder, projector)
    for name, p in named.items():
        if not p.requires_grad:
            assert torch.equal(before[name], p), f"frozen {name} changed"
    moved = {name for name, p in named.items() if not torch.equal(before[name], p)}
    assert any(name.startswith("proj.") for name in moved)
    assert any("cross_attn" in name for name in moved)
    assert any(name.startswith("enc.") for name in moved) == (strategy != "proj")


def test_unknown_strategy_names_the_valid_ones():
    model, adapter, encoder, projector = contextualised_llama(gate=0.0)
    with pytest.raises(ValueError, match="full, lora, enc, proj"):
        apply_strategy("frozen", model, encoder, [adapter, projector])


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all-linear"])
def test_lora_leaves_the_cross_attention_blocks_alone(targets):
    model, adapter, encoder, projector = contextualised_llama(gate=0.0)
    tokenizer = make_tokenizer()
    batch = prompt_batch(tokenizer, PROMPTS)
    tokens = user_tokens(3)
    with torch.no_grad(), adapter.conditioned_on(tokens):
        reference = model(**batch).logits
    llm = apply_strategy("lora", model, encoder, [adapter, projector], lora={**LORA, "target_modules": targets})
    assert not any("lora_" in name for name, _ in adapter.named_parameters())
    assert any("lora_A" in name for name, _ in llm.named_parameters())
    with torch.no_grad(), adapter.conditioned_on(tokens):
        assert torch.equal(llm(**batch).logits, reference)  # LoRA B starts at zero, gates at zero
        open_gates(adapter)
        generated = llm.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (3, batch["input_ids"].shape[1] + 3)


# ---------------------------------------------------------------- constrained decoding


def test_trie_allows_only_catalogue_continuations():
    tokenizer = make_tokenizer()
    trie = CatalogueTrie(tokenizer, CATALOGUE)
    film, noir, eos = (tokenizer.convert_tokens_to_ids(t) for t in ("film", "noir", "<eos>"))
    assert sorted(trie.allowed_tokens([film])) == sorted([noir, eos])
    assert trie.allowed_tokens([film, noir]) == [eos]
    assert trie.allowed_tokens([noir]) == [eos]  # off the trie: end the beam
    assert trie.lookup([film, eos, 0, 0]) == "film"
    assert trie.lookup([film]) is None


def test_trie_exclusion_blocks_finished_strings_and_branches_with_nothing_else():
    tokenizer = make_tokenizer()
    trie = CatalogueTrie(tokenizer, CATALOGUE)
    film, noir, eos = (tokenizer.convert_tokens_to_ids(t) for t in ("film", "noir", "<eos>"))
    drama = tokenizer.convert_tokens_to_ids("drama")
    excluded = trie.excluded(["film", "drama", "not in the catalogue"])
    assert trie.allowed_tokens([film], excluded) == [noir]  # "film" may not end; "film noir" still may
    assert drama not in trie.allowed_tokens([], excluded)  # nothing but "drama" lies under it
    assert film in trie.allowed_tokens([], excluded)
    both = trie.excluded(["film", "film noir"])
    assert film not in trie.allowed_tokens([], both)
    assert trie.allowed_tokens([], trie.excluded(CATALOGUE)) == [eos]  # nothing left: the beam ends empty


def test_constrained_generation_never_returns_excluded_strings():
    model, tokenizer = make_model("llama"), make_tokenizer()
    prompts = constrained_prompts(tokenizer)
    trie = CatalogueTrie(tokenizer, CATALOGUE)
    free = constrained_generate(model, tokenizer, prompts, trie, num_beams=6, num_return=6, length_penalty=0)
    exclude = [set(ranked[:2]) for ranked in free]  # each prompt's two favourites
    ranked = constrained_generate(model, tokenizer, prompts, trie, num_beams=6, num_return=6, length_penalty=0,
                                  exclude=exclude)
    for strings, left_out, before in zip(ranked, exclude, free):
        assert strings == [text for text in before if text not in left_out]  # the rest, in the same order


def constrained_prompts(tokenizer) -> list[str]:
    instruction = task_instruction("favorite_genre")
    return [build_prompt(tokenizer, instruction, history) for history in ("toy story", "heat", None)]


def test_constrained_generation_emits_only_catalogue_strings():
    model, tokenizer = make_model("llama"), make_tokenizer()
    prompts = constrained_prompts(tokenizer)
    ranked = constrained_generate(model, tokenizer, prompts, CATALOGUE, num_beams=4, num_return=3)
    assert len(ranked) == 3
    for strings in ranked:
        assert len(strings) == 3 and len(set(strings)) == 3 and set(strings) <= set(CATALOGUE)


def test_constrained_ranking_follows_the_catalogue_likelihood():
    """With beams for the whole catalogue and no length normalisation, the ranking is the exact one."""
    model, tokenizer = make_model("llama"), make_tokenizer()
    prompt = constrained_prompts(tokenizer)[0]
    (ranked,) = constrained_generate(model, tokenizer, [prompt], CATALOGUE, num_beams=8, num_return=6, length_penalty=0)

    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    scores = {}
    for text in CATALOGUE:
        target = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + target])).logits[0, len(prompt_ids) - 1 : -1]
        scores[text] = logits.log_softmax(-1).gather(-1, torch.tensor(target)[:, None]).sum().item()
    assert ranked == sorted(CATALOGUE, key=scores.get, reverse=True)


def test_constrained_generation_with_cross_attention_matches_each_row_alone():
    model, tokenizer = make_model("llama"), make_tokenizer()
    adapter = add_cross_attention(model, every=1)
    open_gates(adapter, 2.0)
    prompts, tokens, trie = constrained_prompts(tokenizer), user_tokens(3), CatalogueTrie(tokenizer, CATALOGUE)
    with adapter.conditioned_on(tokens):
        batched = constrained_generate(model, tokenizer, prompts, trie, num_beams=6, num_return=4)
    for row, prompt in enumerate(prompts):
        with adapter.conditioned_on(tokens[row : row + 1]):
            assert constrained_generate(model, tokenizer, [prompt], trie, num_beams=6, num_return=4) == [batched[row]]


def test_constrained_generation_from_a_soft_prompt():
    model, tokenizer = make_model("llama"), make_tokenizer()
    prompts = constrained_prompts(tokenizer)
    inputs = prepend_user_tokens(model, **prompt_batch(tokenizer, prompts), user_tokens=user_tokens(3))
    ranked = constrained_generate(model, tokenizer, inputs.as_kwargs(), CATALOGUE, num_beams=4, num_return=3)
    assert all(len(strings) == 3 and set(strings) <= set(CATALOGUE) for strings in ranked)


# ---------------------------------------------------------------- prompts


def test_history_as_text_keeps_the_most_recent_events_oldest_first():
    events = [
        {"title": "Heat (1995)", "categories": ["Action", "Crime"], "rating": 5.0},
        {"title": "Toy Story (1995)", "categories": ["Animation", "Comedy"], "rating": 4.0},
        {"title": "Casino (1995)", "categories": [], "rating": 3.5},
        {"title": "Unrated", "categories": ["Drama"], "rating": None},
    ]
    assert history_as_text(events, max_events=3).splitlines() == [
        "- Toy Story (1995) | Animation, Comedy | rated 4",
        "- Casino (1995) | rated 3.5",
        "- Unrated | Drama",
    ]
    assert history_as_text(events, max_events=0) == ""


def test_task_instructions():
    assert "category" in task_instruction("favorite_genre", label="category")
    assert "genre" in task_instruction("favorite_genre")
    assert '"Heat" 4.5' in task_instruction("review", item="Heat", rating=4.5)
    with pytest.raises(ValueError, match="item name"):
        task_instruction("review")
    with pytest.raises(ValueError, match="next_item"):
        task_instruction("summary")


def test_build_prompt_uses_the_chat_template_and_ends_at_the_answer():
    tokenizer = make_tokenizer()
    prompt = build_prompt(tokenizer, "answer .", "- heat")
    assert prompt.startswith("<|user|> ") and prompt.endswith("<|assistant|> ")
    assert "- heat" in prompt and "answer ." in prompt
    plain = build_prompt(make_tokenizer(chat_template=None), "answer .")
    assert plain.endswith("Answer: ") and "history" not in plain


# ---------------------------------------------------------------- loading


def save_tiny(path, chat_template: str | None = CHAT_TEMPLATE) -> None:
    make_model("llama").save_pretrained(path)
    tokenizer = make_tokenizer(chat_template)
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(path)


def test_load_llm_from_a_local_path_prepares_the_tokenizer(tmp_path):
    save_tiny(tmp_path / "tiny")
    model, tokenizer = load_llm(str(tmp_path / "tiny"), cache_dir=tmp_path / "cache")
    assert model.dtype == torch.float32
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == tokenizer.eos_token


def test_offline_default_loads_an_existing_converted_copy_without_downloading(tmp_path, monkeypatch):
    save_tiny(tmp_path / SMOLLM2_DIR)

    def no_download(target):
        raise AssertionError("should not convert again")

    monkeypatch.setattr(load_module, "convert_smollm2_gguf", no_download)
    model, tokenizer = load_llm(OFFLINE_DEFAULT_LLM, cache_dir=tmp_path)
    assert model.config.hidden_size == HIDDEN and tokenizer.chat_template == CHAT_TEMPLATE
