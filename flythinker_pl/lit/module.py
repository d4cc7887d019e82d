"""One LightningModule for every method: it knows batches, losses and optimisers, no method math."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torchmetrics import MeanMetric
from transformers import get_scheduler

from ..config import DecodeConfig, TrainConfig
from ..data.encode import IGNORE_INDEX
from ..data.prompts import split_rationale
from ..decoding.generate import generate, prompts_of

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def scored_width(labels: torch.Tensor) -> int:
    """How many trailing columns have logits the loss reads: from the earliest column whose next
    token is scored (responses are the last columns of left-padded rows). Every method computes
    logits (its LM head) for these columns only; with a 150k vocabulary the prompt's would cost GBs."""
    width = labels.shape[1]
    columns = torch.arange(width - 1, device=labels.device)
    first = int(torch.where((labels[:, 1:] != IGNORE_INDEX).any(0), columns, width - 1).min())
    return width - first


def method_loss(method: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One teacher-forced pass of any method and its response loss: the one LM-head policy."""
    per_row = {"thoughts": batch["thoughts"]} if "thoughts" in batch else {}  # Coconut's curriculum
    logits = method(
        batch["input_ids"],
        batch["attention_mask"],
        batch["prompt_len"],
        profile_mask=batch.get("profile_mask"),
        logits_to_keep=scored_width(batch["labels"]),
        **per_row,
    )
    return response_loss(logits, batch["labels"])


def response_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over response tokens (+ EOS), and how many there were.
    `logits` may cover only the last columns (scored_width). Only response rows are upcast to fp32."""
    labels = labels[:, labels.shape[1] - logits.shape[1] :]
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    total = F.cross_entropy(logits[:, :-1][scored].float(), targets[scored], reduction="sum")
    count = scored.sum()
    return total / count.clamp(min=1), count


class MethodModule(L.LightningModule):
    def __init__(
        self,
        method: nn.Module,
        train_cfg: TrainConfig,
        tokenizer=None,
        decode_cfg: DecodeConfig = None,
        writes_rationale: bool = False,
    ):
        super().__init__()
        self.writes_rationale = writes_rationale  # cot: only the text after the rationale is the prediction
        self.method = method.train()  # from_pretrained returns eval mode; Lightning keeps modes as given
        self.train_cfg = train_cfg
        self.tokenizer, self.decode_cfg = tokenizer, decode_cfg  # for predict_step
        self.strict_loading = False  # checkpoints hold trainable weights only
        self.val_loss = MeanMetric()

    def configure_model(self) -> None:
        """trainer.strategy=fsdp: shard the method across the data-parallel mesh (lit/sharding.py)."""
        if self.device_mesh is not None:
            from .sharding import shard

            self.method = shard(self.method, self.device_mesh["data_parallel"], str(self.trainer.precision))

    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return method_loss(self.method, batch)

    def training_step(self, batch, batch_idx):
        loss, _ = self.batch_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def validation_step(self, batch, batch_idx):
        loss, count = self.batch_loss(batch)
        self.val_loss.update(loss, weight=count)  # token-weighted across batches and ranks

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()
        self.val_loss.reset()
        # the metric already combined all ranks: no second reduction
        self.log_dict({"val/loss": loss, "val/ppl": torch.exp(loss)}, prog_bar=True, sync_dist=False)

    def on_predict_start(self):
        if self.decode_cfg.reasoner_device:  # after Lightning placed the whole module on its device
            self.method.reasoner.to(self.decode_cfg.reasoner_device)

    def stop_ids(self) -> list[int]:
        """The tokenizer's EOS and any the Generator's generation config adds (Qwen2.5-Instruct
        stops on <|im_end|> and <|endoftext|>)."""
        configured = getattr(getattr(self.method.generator, "generation_config", None), "eos_token_id", None)
        configured = configured if isinstance(configured, list) else [configured]
        return list(dict.fromkeys([self.tokenizer.eos_token_id, *[i for i in configured if i is not None]]))

    def predict_step(self, batch, batch_idx):
        """Decode the batch's prompts; one JSON-ready record per sample."""
        pad_id = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask, profile_mask = prompts_of(batch, pad_id)
        result = generate(
            self.method,
            prompt_ids,
            prompt_mask,
            batch["prompt_len"],
            batch["ids"],
            self.decode_cfg,
            self.stop_ids(),
            profile_mask=profile_mask,
        )
        # timing is per batch: every row of a batch is decoded in the same steps
        timing = {
            "batch_seconds": round(result.seconds, 4),
            "batch_size": len(result.tokens),
            "ms_per_token": round(1000 * result.seconds / max(result.num_tokens), 3),
        }
        records = []
        for row, sample_id in enumerate(batch["ids"]):
            prompt = prompt_ids[row][prompt_mask[row].bool()]
            text = self.tokenizer.decode(result.tokens[row], skip_special_tokens=True)
            rationale, prediction = split_rationale(text) if self.writes_rationale else (None, text)
            records.append(
                {
                    "id": sample_id,
                    "prompt": self.tokenizer.decode(prompt),
                    "prediction": prediction,
                    **({"rationale": rationale} if self.writes_rationale else {}),
                    "reference": batch["reference"][row],
                    "prompt_tokens": len(prompt),
                    "new_tokens": result.num_tokens[row],
                    "ended_by_eos": result.ended[row],
                    **timing,
                }
            )
        return records

    def on_predict_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        # after the callbacks' hooks (the PredictionWriter has written this batch)
        if self.trainer.received_sigterm:  # Lightning's predict loop never checks it (fit and validate do)
            raise SIGTERMException

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]
        cfg = self.train_cfg
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
        total = self.trainer.estimated_stepping_batches
        scheduler = get_scheduler(
            SCHEDULES[cfg.schedule],
            optimizer,
            num_warmup_steps=math.ceil(cfg.warmup_ratio * total),
            num_training_steps=total,
        )
        # named: LearningRateMonitor logs it as train/lr, beside train/loss in TensorBoard
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }

    def trainable_names(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """strict_loading=False tolerates the frozen weights a checkpoint leaves out, not missing
        trainable ones: those mean the checkpoint belongs to another method or fusion setup."""
        missing = sorted(self.trainable_names() - set(checkpoint["state_dict"]))
        if missing:
            raise RuntimeError(
                f"the checkpoint lacks {len(missing)} trainable weights of this model, e.g. "
                f"{missing[:3]}: it was trained with another method or model config"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
