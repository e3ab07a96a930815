"""Constrained decoding: beam search that can only spell strings of a catalogue (item titles, genre labels).

Each catalogue string is tokenised on its own (no special tokens) and ended with EOS; the token
sequences form a prefix trie. At every step a beam may only continue with the tokens its
generated prefix allows, so every finished beam is exactly one catalogue string and the beam
scores rank catalogue strings by the model's log-likelihood (length-normalised as `generate`'s
`length_penalty` says). Training targets must be tokenised the same way (`tokenize_candidate`),
otherwise the trie and the fine-tuned model disagree about how a title is spelled.

Strings can be left out per prompt (the items a user has already seen): a beam may not finish one,
nor enter a branch that holds nothing else, so no beam is spent on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Per prefix of token ids, the next tokens that lead only to excluded strings (`CatalogueTrie.excluded`).
Exclusion = dict[tuple[int, ...], set[int]]


def tokenize_candidate(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The token ids the LLM should generate for `text`: its own tokens, then EOS."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


class CatalogueTrie:
    """Prefix trie over the tokenised catalogue; every path from the root ends with EOS.

    Build it once per catalogue and reuse it: MovieLens-20M has 27k titles.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, candidates: Sequence[str]) -> None:
        self.eos_token_id = tokenizer.eos_token_id
        self.root: dict[int, dict] = {}
        self.strings: dict[tuple[int, ...], str] = {}
        for text in candidates:
            ids = tuple(tokenize_candidate(tokenizer, text))
            previous = self.strings.setdefault(ids, text)
            if previous != text:
                raise ValueError(f"Catalogue strings {previous!r} and {text!r} tokenise identically")
            node = self.root
            for token in ids:
                node = node.setdefault(token, {})
        if not self.strings:
            raise ValueError("The catalogue is empty")
        self.max_length = max(len(ids) for ids in self.strings)

    @cached_property
    def token_ids(self) -> dict[str, tuple[int, ...]]:
        """Each catalogue string's token ids (the inverse of `strings`)."""
        return {text: ids for ids, text in self.strings.items()}

    @cached_property
    def strings_under(self) -> Counter[tuple[int, ...]]:
        """How many catalogue strings start with each prefix: built on the first exclusion only."""
        return self._count_under(self.strings)

    @staticmethod
    def _count_under(sequences: Iterable[tuple[int, ...]]) -> Counter[tuple[int, ...]]:
        """How many of `sequences` start with each prefix (the empty one left out)."""
        return Counter(ids[:end] for ids in sequences for end in range(1, len(ids) + 1))

    def excluded(self, strings: Iterable[str]) -> Exclusion:
        """`strings` in the form `allowed_tokens` takes: per prefix, the next tokens that lead only to
        excluded strings (strings outside the catalogue are ignored)."""
        under = self._count_under(self.token_ids[text] for text in set(strings) if text in self.token_ids)
        blocked: Exclusion = {}
        for prefix, count in under.items():
            if count == self.strings_under[prefix]:
                blocked.setdefault(prefix[:-1], set()).add(prefix[-1])
        return blocked

    def allowed_tokens(self, prefix: Sequence[int], excluded: Exclusion | None = None) -> list[int]:
        """Tokens that may follow `prefix`; EOS once the prefix has left the trie or finished a string.

        `excluded` (from `excluded`) takes away the tokens that lead only to excluded strings. Beam
        search keeps `num_beams` beams alive even when fewer valid continuations exist; such beams
        carry a score of -inf and are ended with EOS here, then dropped by `lookup`.
        """
        node = self.root
        for token in prefix:
            if token not in node:
                return [self.eos_token_id]
            node = node[token]
        blocked = excluded.get(tuple(prefix), ()) if excluded else ()
        return [t for t in node if t not in blocked] or [self.eos_token_id]

    def lookup(self, token_ids: Sequence[int]) -> str | None:
        """The catalogue string spelled by generated `token_ids` (trailing padding allowed), or None."""
        ids = list(token_ids)
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id) + 1]
        return self.strings.get(tuple(ids))

    def prefix_allowed_tokens_fn(
        self, prompt_length: int, excluded: Sequence[Exclusion] | None = None
    ) -> Callable[[int, torch.Tensor], list[int]]:
        """A `generate(prefix_allowed_tokens_fn=...)` callback that reads only the generated tokens.

        `generate` hands the callback prompt + generated ids for `input_ids` prompts (all rows of a
        left-padded batch share `prompt_length`) and only the generated ids for `inputs_embeds`
        prompts (`prompt_length=0`). `excluded[i]` leaves strings out for prompt i.
        """

        def allowed(batch_id: int, sequence: torch.Tensor) -> list[int]:
            return self.allowed_tokens(sequence[prompt_length:].tolist(), excluded[batch_id] if excluded else None)

        return allowed


@torch.no_grad()
def constrained_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | Mapping[str, torch.Tensor],
    candidates: Sequence[str] | CatalogueTrie,
    num_beams: int = 10,
    num_return: int = 10,
    exclude: Sequence[Iterable[str]] | None = None,
    **generate_kwargs,
) -> list[list[str]]:
    """Rank catalogue strings for each prompt with trie-constrained beam search.

    `prompts` are prompt strings (tokenised here, left-padded) or ready model inputs: `input_ids` or
    `inputs_embeds` (soft prompt), with `attention_mask` and optionally `position_ids`. For the
    cross-attention integration call this inside `adapter.conditioned_on(...)`. `generate_kwargs`
    go to `generate` (e.g. `length_penalty=0.0` ranks by the plain log-likelihood). `exclude[i]`
    are catalogue strings prompt i may not get. Returns, per prompt, up to `num_return` distinct
    catalogue strings, best first.
    """
    trie = candidates if isinstance(candidates, CatalogueTrie) else CatalogueTrie(tokenizer, candidates)
    if isinstance(prompts, Mapping):
        inputs = dict(prompts)
    else:
        inputs = dict(tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False))
        inputs = {key: value.to(model.device) for key, value in inputs.items()}
    prompt_length = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
    num_return = min(num_return, len(trie.strings))
    num_beams = max(num_beams, num_return)

    options = {"max_new_tokens": trie.max_length, "pad_token_id": tokenizer.pad_token_id, **generate_kwargs}
    sequences = model.generate(
        **inputs,
        **options,
        prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn(
            prompt_length, None if exclude is None else [trie.excluded(strings) for strings in exclude]
        ),
        num_beams=num_beams,
        num_return_sequences=num_beams,
        do_sample=False,
        eos_token_id=trie.eos_token_id,
    )
    generated = sequences[:, prompt_length:].reshape(-1, num_beams, sequences.shape[1] - prompt_length)

    ranked = []
    for beams in generated.tolist():
        strings = dict.fromkeys(text for text in map(trie.lookup, beams) if text is not None)
        ranked.append(list(strings)[:num_return])
    return ranked
