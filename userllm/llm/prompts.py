"""Prompts: task instructions, the history written as text (TP baseline), and the chat-template wrapper.

Every string the LLM reads is defined here, so User-LLM and the text-prompt baseline differ only
in whether `history_text` is given. Instructions are short on purpose: with user embeddings the
instruction is most of what the LLM reads, and its length is the cost the paper compares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TASKS = ("next_item", "favorite_genre", "review")

INSTRUCTIONS = {
    "next_item": "Which item will this user interact with next? Answer with its title only.",
    "favorite_genre": "Which {label} appears most often in this user's history? Answer with the {label} only.",
    "review": 'The user rated "{item}" {rating} out of 5. Write the review they gave it.',
}
"""Per-task instruction templates; `{label}` is "genre" (MovieLens) or "category" (Amazon, Google Local)."""

HISTORY_HEADER = "The user's history, oldest first:"
PLAIN_PROMPT = "{content}\nAnswer: "
"""Fallback for tokenizers without a chat template (base models)."""


def format_rating(rating: float) -> str:
    """4.0 -> "4", 3.5 -> "3.5": half stars stay, trailing zeros go."""
    return f"{rating:g}"


def task_instruction(task: str, label: str = "genre", item: str | None = None, rating: float | None = None) -> str:
    """The instruction of `task`; `review` needs the reviewed `item`'s name and the user's `rating`."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; valid: {', '.join(TASKS)}")
    if task == "review":
        if item is None or rating is None:
            raise ValueError("The review instruction needs the item name and the rating")
        return INSTRUCTIONS[task].format(item=item, rating=format_rating(rating))
    return INSTRUCTIONS[task].format(label=label)


def history_as_text(events: Sequence[Mapping[str, Any]], max_events: int) -> str:
    """The last `max_events` events, oldest first, one line each: `- Toy Story (1995) | Animation, Comedy | rated 4`.

    Events are dicts with `title`, and optionally `categories` (list of str) and `rating`; missing
    parts are left out of the line rather than written as placeholders.
    """
    lines = []
    for event in events[max(len(events) - max_events, 0) :]:
        parts = [event["title"]]
        if event.get("categories"):
            parts.append(", ".join(event["categories"]))
        if event.get("rating") is not None:
            parts.append(f"rated {format_rating(event['rating'])}")
        lines.append("- " + " | ".join(parts))
    return "\n".join(lines)


def build_prompt(tokenizer, instruction: str, history_text: str | None = None) -> str:
    """The prompt string for one example: history (TP baseline only) and instruction as one user turn.

    The chat template adds the assistant header (`add_generation_prompt=True`), so the target
    follows the prompt directly. Tokenise the result with `add_special_tokens=False`: the template
    already wrote any BOS it wants.
    """
    content = f"{HISTORY_HEADER}\n{history_text}\n\n{instruction}" if history_text else instruction
    if not tokenizer.chat_template:
        return PLAIN_PROMPT.format(content=content)
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
