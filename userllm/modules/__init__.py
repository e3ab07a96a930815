"""The two LightningModules: stage-1 encoder pretraining and stage-2 LLM contextualization."""
