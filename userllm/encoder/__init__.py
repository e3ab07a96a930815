"""The user encoder (stage 1), its next-event heads, and the Perceiver resampler (stage 2)."""

from userllm.encoder.heads import NextEventHeads
from userllm.encoder.model import EncoderConfig, UserEncoder
from userllm.encoder.perceiver import PerceiverResampler

__all__ = ["EncoderConfig", "NextEventHeads", "PerceiverResampler", "UserEncoder"]
