"""Training strategies of PAPER.md: which of LLM, user encoder and new modules train.

| strategy | LLM                | user encoder | new modules (projector, Perceiver, cross-attention) |
|----------|--------------------|--------------|-----------------------------------------------------|
| full     | trained            | trained      | trained                                             |
| lora     | LoRA adapters only | trained      | trained                                             |
| enc      | frozen             | trained      | trained                                             |
| proj     | frozen             | frozen       | trained                                             |

New modules may live inside the LLM (the cross-attention blocks do), so the LLM is frozen first and
the new modules are unfrozen afterwards; for `lora` they are also kept out of LoRA's targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from peft import LoraConfig, get_peft_model
from torch import nn

STRATEGIES = ("full", "lora", "enc", "proj")


def apply_strategy(
    name: str,
    llm: nn.Module,
    encoder: nn.Module | None,
    new_modules: Sequence[nn.Module],
    lora: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Set `requires_grad` on every parameter for strategy `name`; returns the LLM, peft-wrapped for `lora`.

    `lora` holds `rank`, `alpha`, `dropout` and `target_modules` (a list of module-name suffixes,
    a regex, or "all-linear"). Apply LoRA after the cross-attention injection: the injected blocks
    are then excluded from LoRA's targets by name and stay fully trainable.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown training strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if name == "lora":
        if lora is None:
            raise ValueError("The 'lora' strategy needs a `lora` config (rank, alpha, dropout, target_modules)")
        llm = get_peft_model(llm, lora_config(llm, new_modules, lora))
    else:
        llm.requires_grad_(name == "full")
    if encoder is not None:  # the text-prompt baseline has none
        encoder.requires_grad_(name != "proj")
    for module in new_modules:
        module.requires_grad_(True)
    return llm


def lora_config(llm: nn.Module, new_modules: Sequence[nn.Module], lora: Mapping[str, Any]) -> LoraConfig:
    """A LoraConfig whose `exclude_modules` names every part of the new modules that sits inside the LLM."""
    new_ids = {id(sub) for module in new_modules for sub in module.modules()}
    inside = [name for name, sub in llm.named_modules() if id(sub) in new_ids]
    targets = lora["target_modules"]
    return LoraConfig(
        r=lora["rank"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=targets if isinstance(targets, str) else list(targets),  # a Hydra ListConfig is no list
        exclude_modules=inside or None,
        task_type="CAUSAL_LM",
    )
