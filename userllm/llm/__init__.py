"""The LLM side of User-LLM: loading, cross-attention and soft-prompt integration, prompts, decoding."""

from userllm.llm.constrained import CatalogueTrie, constrained_generate, tokenize_candidate
from userllm.llm.cross_attention import CrossAttentionAdapter, GatedCrossAttention, add_cross_attention
from userllm.llm.load import OFFLINE_DEFAULT_LLM, load_llm
from userllm.llm.prompts import build_prompt, history_as_text, task_instruction
from userllm.llm.soft_prompt import SoftPromptInputs, prepend_user_tokens
from userllm.llm.strategies import STRATEGIES, apply_strategy

__all__ = [
    "OFFLINE_DEFAULT_LLM",
    "STRATEGIES",
    "CatalogueTrie",
    "CrossAttentionAdapter",
    "GatedCrossAttention",
    "SoftPromptInputs",
    "add_cross_attention",
    "apply_strategy",
    "build_prompt",
    "constrained_generate",
    "history_as_text",
    "load_llm",
    "prepend_user_tokens",
    "task_instruction",
    "tokenize_candidate",
]
