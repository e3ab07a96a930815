"""Stage 2 as one LightningModule: an LLM contextualised with user embeddings, or the TP baseline.

integration:
  cross_attention  user tokens are keys/values of gated cross-attention blocks inside the LLM
  soft_prompt      user tokens are prepended to the text token embeddings
  text_prompt      no encoder: the history is written into the prompt (the collator does that)
The user tokens are the encoder's per-event embeddings, optionally resampled by a Perceiver to a
fixed number of latents, then projected to the LLM's width. Which parameters train is the
strategy's business (full | lora | enc | proj, see `userllm.llm.strategies`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from userllm.encoder.model import UserEncoder
from userllm.encoder.perceiver import PerceiverResampler
from userllm.llm.constrained import CatalogueTrie, constrained_generate
from userllm.llm.cross_attention import add_cross_attention
from userllm.llm.soft_prompt import IGNORE_INDEX, prepend_user_tokens
from userllm.llm.strategies import apply_strategy
from userllm.metrics import RESERVED_IDS, accuracy, popularity_scores, ranks, rouge_lsum
from userllm.modules.optim import adamw_with_schedule, decay_groups
from userllm.tasks import Task

INTEGRATIONS = ("cross_attention", "soft_prompt", "text_prompt")
ARCHITECTURE = ("integration", "strategy", "perceiver", "cross_attention", "lora")
"""Hyperparameters that decide which parameters exist, and so what a checkpoint of the trainable ones holds."""


class UserLLM(L.LightningModule):
    """The LLM, the user encoder, and the new modules that connect them, for one task.

    Checkpoints hold only trainable parameters (and the new modules' buffers): the frozen LLM is
    rebuilt from `llm.name_or_path`, not copied into every checkpoint.
    """

    def __init__(
        self,
        llm: nn.Module,
        tokenizer: Any,
        task: Task,
        integration: str = "cross_attention",
        encoder: UserEncoder | None = None,
        strategy: str = "enc",
        perceiver: dict | None = None,
        cross_attention: dict | None = None,
        lora: dict | None = None,
        lr: float = 1e-3,
        gate_lr: float = 0.1,
        llm_lr: float = 5e-5,
        weight_decay: float = 0.0,
        betas: Sequence[float] = (0.9, 0.999),
        warmup_steps: int = 20,
        min_lr_ratio: float = 0.1,
        num_beams: int = 10,
        max_new_tokens: int = 48,
        ks: Sequence[int] = (1, 5, 10),
        exclude_seen: bool = True,
        popularity: Tensor | None = None,
        majority_label: str | None = None,
        sample_generations: int = 16,
    ) -> None:
        super().__init__()
        if integration not in INTEGRATIONS:
            raise ValueError(f"unknown integration {integration!r}: expected one of {INTEGRATIONS}")
        if integration != "text_prompt" and encoder is None:
            raise ValueError(f"integration={integration} needs a user encoder")
        self.save_hyperparameters(ignore=["llm", "tokenizer", "task", "encoder", "popularity"], logger=False)
        self.strict_loading = False  # checkpoints hold only the trainable part
        self.tokenizer = tokenizer
        self.task = task
        self.integration = integration
        hidden = llm.config.hidden_size

        new_modules: list[nn.Module] = []
        self.encoder = encoder if integration != "text_prompt" else None
        self.perceiver = None
        self.projector = None
        self.adapter = None
        if self.encoder is not None:
            width = self.encoder.config.dim
            if perceiver and perceiver.get("latents", 0) > 0:
                self.perceiver = PerceiverResampler(
                    width, width, num_latents=perceiver["latents"], layers=perceiver.get("layers", 2),
                    heads=perceiver.get("heads", 4),
                )
                new_modules.append(self.perceiver)
            self.projector = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
            new_modules.append(self.projector)
        if integration == "cross_attention":
            options = dict(cross_attention or {})
            self.adapter = add_cross_attention(llm, every=options.get("every", 3), layers=options.get("layers"))
            new_modules.append(self.adapter)
        self.llm = apply_strategy(strategy, llm, self.encoder, new_modules, lora)
        self.register_buffer(
            "popularity", popularity if popularity is not None else torch.zeros(1), persistent=False
        )
        self.trie = CatalogueTrie(tokenizer, task.candidates) if task.candidates else None
        self._reset_eval()

    # -- the user context ---------------------------------------------------------------------------

    def user_tokens(self, batch: dict) -> tuple[Tensor, Tensor] | None:
        """[B, M, H] user tokens and their [B, M] mask (None for the text-prompt baseline)."""
        if self.encoder is None:
            return None
        mask = batch["mask"]
        events = self.encoder(batch["features"], mask)
        if self.perceiver is not None:
            events = self.perceiver(events, mask)
            mask = torch.ones(events.shape[:2], dtype=torch.bool, device=events.device)
        return self.projector(events), mask

    def llm_inputs(self, inputs: dict[str, Tensor], user: tuple[Tensor, Tensor] | None) -> dict:
        """Model kwargs for this integration (the soft prompt inserts the user tokens here)."""
        if self.integration != "soft_prompt":
            return dict(inputs)
        tokens, mask = user
        merged = prepend_user_tokens(
            self.llm, inputs["input_ids"], inputs["attention_mask"], tokens, mask.long(), inputs.get("labels")
        )
        return merged.as_kwargs()

    def conditioned(self, user: tuple[Tensor, Tensor] | None):
        """Context in which the cross-attention blocks see this batch's user tokens."""
        if self.adapter is None:
            return nullcontext()
        return self.adapter.conditioned_on(user[0], user[1].long())

    # -- training -------------------------------------------------------------------------------------

    def loss(self, batch: dict) -> Tensor:
        """Cross-entropy on the target tokens only; logits are computed only where a loss is taken."""
        user = self.user_tokens(batch)
        kwargs = self.llm_inputs(batch["llm_inputs"], user)
        labels = kwargs.pop("labels")
        keep = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
        with self.conditioned(user):
            logits = self.llm(**kwargs, logits_to_keep=keep).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), labels[:, keep + 1].flatten(), ignore_index=IGNORE_INDEX)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["target_text"]))
        if self.adapter is not None:
            gates = torch.stack([g.detach().float().tanh().abs().mean() for g in self.adapter.gates()])
            self.log("train/gate_mean", gates.mean(), batch_size=len(batch["target_text"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.loss(batch), prog_bar=True, batch_size=len(batch["target_text"]))
        self._evaluate(batch)

    def on_validation_epoch_start(self) -> None:
        self._reset_eval()

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self._eval_metrics("val"))

    # -- evaluation -----------------------------------------------------------------------------------

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_start(self) -> None:
        self._reset_eval()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._eval_metrics("test"))

    def _reset_eval(self) -> None:
        self.predictions: list[list[str]] = []
        self.references: list[str] = []
        self.baseline_ranks: list[Tensor] = []
        self.generations: list[dict] = []

    @torch.no_grad()
    def generate(self, batch: dict) -> list[list[str]]:
        """Ranked answers per example: catalogue strings for constrained tasks, one text otherwise."""
        user = self.user_tokens(batch)
        inputs = self.llm_inputs(batch["generation_inputs"], user)
        with self.conditioned(user):
            if self.trie is not None:
                return constrained_generate(
                    self.llm, self.tokenizer, inputs, self.trie, num_beams=self.hparams.num_beams,
                    num_return=max(self.hparams.ks) if self.task.name == "next_item" else 1,
                    exclude=self._seen_titles(batch) if self._excludes_seen else None,
                )
            output = self.llm.generate(
                **inputs, max_new_tokens=self.hparams.max_new_tokens, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        prompt_length = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
        texts = self.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        return [[text.strip()] for text in texts]

    @property
    def _excludes_seen(self) -> bool:
        return self.task.name == "next_item" and self.hparams.exclude_seen

    def _seen_titles(self, batch: dict) -> list[set[str]]:
        """Per example, the titles of the items the user saw before the target, the target's own
        left in: what `ranks` leaves out of the popularity baseline's ranking, by title."""
        titles = self.task.titles
        return [
            {titles[i] for i in seen.tolist() if i >= RESERVED_IDS} - {target}
            for seen, target in zip(batch["seen"], batch["target_text"])
        ]

    def _evaluate(self, batch: dict) -> None:
        ranked = self.generate(batch)
        self.predictions.extend(ranked)
        self.references.extend(batch["target_text"])
        if self.task.name == "next_item":
            scores = popularity_scores(self.popularity).expand(len(ranked), -1)
            seen = batch["seen"] if self._excludes_seen else None
            self.baseline_ranks.append(ranks(scores, batch["target_item"], seen).cpu())
        if len(self.generations) < self.hparams.sample_generations:
            prompts = self.tokenizer.batch_decode(batch["generation_inputs"]["input_ids"], skip_special_tokens=True)
            for prompt, target, answer in zip(prompts, batch["target_text"], ranked):
                self.generations.append({"prompt": prompt, "target": target, "output": answer[0] if answer else ""})

    def _eval_metrics(self, split: str) -> dict[str, float]:
        """Task metrics of the model and of the trivial baseline on the same examples."""
        if not self.references:
            return {}
        first = [p[0] if p else "" for p in self.predictions]
        if self.task.name == "next_item":
            metrics = {
                f"recall@{k}": sum(ref in p[:k] for p, ref in zip(self.predictions, self.references)) / len(self.references)
                for k in self.hparams.ks
            }
            baseline = torch.cat(self.baseline_ranks)
            metrics |= {f"pop_recall@{k}": float((baseline <= k).float().mean()) for k in self.hparams.ks}
        elif self.task.name == "favorite_genre":
            metrics = {"accuracy": accuracy(first, self.references)}
            if self.hparams.majority_label is not None:
                majority = [self.hparams.majority_label] * len(self.references)
                metrics["majority_accuracy"] = accuracy(majority, self.references)
        else:
            metrics = {"rouge_lsum": rouge_lsum(first, self.references)}
        return {f"{split}/{name}": value for name, value in metrics.items()}

    # -- optimisation and checkpoints -------------------------------------------------------------------

    def configure_optimizers(self):
        """Three learning rates: the LLM's own pretrained weights (`llm_lr`, strategy full), the
        tanh gates (`gate_lr`) and everything new or adapted (`lr`: encoder, Perceiver, projector,
        cross-attention blocks, LoRA adapters)."""
        hp = self.hparams
        gates = {id(g) for g in self.adapter.gates()} if self.adapter is not None else set()
        new = {id(p) for p in self.adapter.parameters()} if self.adapter is not None else set()
        pretrained = {id(p) for n, p in self.llm.named_parameters() if id(p) not in new and "lora_" not in n}
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        gate_params = [p for _, p in trainable if id(p) in gates]
        named = [(n, p) for n, p in trainable if id(p) not in gates]
        groups = decay_groups([(n, p) for n, p in named if id(p) not in pretrained], hp.weight_decay)
        groups += decay_groups([(n, p) for n, p in named if id(p) in pretrained], hp.weight_decay, lr=hp.llm_lr)
        if gate_params:
            groups.append({"params": gate_params, "weight_decay": 0.0, "lr": hp.gate_lr})
        return adamw_with_schedule(
            groups, hp.lr, hp.betas, hp.warmup_steps, int(self.trainer.estimated_stepping_batches), hp.min_lr_ratio
        )

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in self._saved_keys()}

    def _saved_keys(self) -> set[str]:
        """What a checkpoint holds: the trainable parameters and the new modules' (persistent) buffers."""
        parameters = dict(self.named_parameters())
        return {k for k in self.state_dict()
                if (parameters[k].requires_grad if k in parameters else not k.startswith("llm."))}

    def load_trainable(self, path: str | Path) -> int:
        """Load a checkpoint this class saved into a model rebuilt from the same config; return its step.

        The checkpoint lacks everything frozen, which comes from the config instead, so one written by
        a model built differently (another integration, strategy, Perceiver or LoRA size) would leave
        parameters untrained or fail on a shape deep inside: both are refused here, naming the cause.
        """
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        saved = checkpoint.get("hyper_parameters", {})
        differ = [f"{k}: checkpoint {saved[k]!r}, config {self.hparams.get(k)!r}"
                  for k in ARCHITECTURE if k in saved and saved[k] != self.hparams.get(k)]
        state = checkpoint["state_dict"]
        expected = self._saved_keys()
        for lacking, names in (("checkpoint", expected - set(state)), ("model", set(state) - expected)):
            if names:
                more = ", ..." if len(names) > 5 else ""
                differ.append(f"parameters the {lacking} lacks: {', '.join(sorted(names)[:5])}{more}")
        if differ:
            raise ValueError(f"{path} was saved by a model built differently; pass the overrides finetune ran "
                             "with:\n  " + "\n  ".join(differ))
        self.load_state_dict(state, strict=False)
        return int(checkpoint.get("global_step", -1))
