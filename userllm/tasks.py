"""The stage-2 tasks: what the LLM is asked about a timeline window, and the answer it must give.

A task turns one example (a history window and its target event) into an instruction and a target
string, and names the strings a constrained decoder may choose from. Everything it needs comes from
the prepared timelines, so a task works the same on every dataset.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property

from userllm.data.timelines import Timelines
from userllm.llm.prompts import task_instruction

TASK_NAMES = ("next_item", "favorite_genre", "review")

HEADLINE: dict[str, tuple[str, str | None]] = {
    "favorite_genre": ("test/accuracy", "test/majority_accuracy"),
    "next_item": ("test/recall@10", "test/pop_recall@10"),
    "review": ("test/rouge_lsum", None),
}
"""Task -> its headline test metric and the trivial baseline scored on the same examples (review has none)."""


@dataclass
class Task:
    """One of TASK_NAMES over prepared timelines; `label_word` is "genre" or "category"."""

    name: str
    timelines: Timelines
    label_word: str = "genre"

    def __post_init__(self) -> None:
        if self.name not in TASK_NAMES:
            raise ValueError(f"unknown task {self.name!r}: expected one of {TASK_NAMES}")
        if self.name == "review" and self.timelines.reviews is None:
            raise ValueError(
                f"task=review needs review text, and {self.timelines.meta.get('dataset', 'this dataset')} "
                "has none (use amazon_2018, amazon_2023 or google_local)"
            )

    @cached_property
    def titles(self) -> list[str]:
        """Title of every item id (padding and unknown included, as empty strings)."""
        items = self.timelines.items
        titles = [""] * (len(items) + 2)
        for item, item_id, title in zip(items["item"], items["item_id"], items["title"]):
            titles[item] = title or item_id
        return titles

    @cached_property
    def item_categories(self) -> list[list[str]]:
        items = self.timelines.items
        categories: list[list[str]] = [[] for _ in range(len(items) + 2)]
        for item, cats in zip(items["item"], items["categories"]):
            categories[item] = list(cats)
        return categories

    @cached_property
    def candidates(self) -> list[str] | None:
        """The strings constrained decoding chooses from (None: free generation)."""
        if self.name == "next_item":
            return sorted(set(self.titles[2:]))
        if self.name == "favorite_genre":
            return list(self.timelines.vocab["category"])
        return None

    def instruction(self, start: int, end: int) -> str:
        """The instruction for the window `[start, end)` whose target event is `end`."""
        if self.name != "review":
            return task_instruction(self.name, label=self.label_word)
        item = int(self.timelines.features["item"][end])
        return task_instruction("review", item=self.titles[item], rating=self.rating(end))

    def target(self, start: int, end: int) -> str:
        """The answer the LLM must produce for the window `[start, end)`."""
        if self.name == "next_item":
            return self.titles[int(self.timelines.features["item"][end])]
        if self.name == "favorite_genre":
            return self.favorite_label(start, end)
        reviews = self.timelines.reviews
        title, text = reviews["review_title"][end], reviews["review_text"][end]
        return title or text or ""

    def favorite_label(self, start: int, end: int) -> str:
        """Most frequent genre/category over the window's events; ties go to the one seen last."""
        counts: Counter[str] = Counter()
        last_seen: dict[str, int] = {}
        for position in range(start, end):
            for category in self.item_categories[int(self.timelines.features["item"][position])]:
                counts[category] += 1
                last_seen[category] = position
        if not counts:
            return ""
        return max(counts, key=lambda c: (counts[c], last_seen[c]))

    def rating(self, position: int) -> float | None:
        code = int(self.timelines.features["rating"][position])
        return float(self.timelines.vocab["rating"][code - 2]) if code >= 2 else None

    def history_events(self, start: int, end: int) -> list[dict]:
        """The window as dicts of title, categories and rating, oldest first (text-prompt baseline)."""
        items = self.timelines.features["item"]
        return [
            {
                "title": self.titles[int(items[p])],
                "categories": self.item_categories[int(items[p])],
                "rating": self.rating(p),
            }
            for p in range(start, end)
        ]
