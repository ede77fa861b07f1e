"""NLVR2: the paired-image classifier and its text-assignment (TA) pretraining stage.

ALBEF's NLVR2 model is a 12-layer BERT whose 6 fusion layers are duplicated into
pairs (``fusion_streams=2``): the even member of a pair cross-attends the first
image, the odd member the second, and the cross-attention key/value projections
are tied inside each pair. Training runs in two stages, as in ALBEF:

1. :class:`TextAssignmentModule` (ALBEF's ``Pretrain_nlvr.py``): one epoch on the
   image-caption pretraining data, classifying for each caption whether it
   describes the first image, the second image or neither of a sampled pair.
2. :class:`NLVRModule` (ALBEF's ``NLVR.py``): fine-tuning a 2-way classifier on
   NLVR2 with momentum distillation.

Weights move between stages through ``init_from``: a TA checkpoint (this
project's, or ALBEF's 18-layer ``pretrain_model_nlvr.pth``) loads the paired
layers one to one; a plain pretraining checkpoint seeds both members of each pair
with its single fusion layer (ALBEF's TA conversion).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from albef_struct.data import NLVRDataModule, PretrainDataModule
from albef_struct.data.collate import is_empty_batch
from albef_struct.lit.classification import ClassifierModule
from albef_struct.lit.schedule import OptimConfig
from albef_struct.lit.task import ALBEFModule
from albef_struct.losses.classification import distilled_cross_entropy
from albef_struct.models import ALBEF, ALBEFConfig
from albef_struct.tasks.passes import fuse_pair, nlvr_logits
from albef_struct.tasks.registry import SummaryMetric, register_task

# ALBEF's recipes (NLVR.yaml, NLVR_pretrain.yaml): 100 warm-up steps at 1e-5, then 2e-5.
NLVR_OPTIM = OptimConfig(lr=2e-5, weight_decay=0.02, warmup_lr=1e-5, warmup_steps=100, min_lr=1e-6)
TA_OPTIM = OptimConfig(lr=2e-5, weight_decay=0.02, warmup_lr=1e-5, warmup_steps=100, min_lr=1e-5)

TA_TEMPERATURE = 0.07  # ALBEF's fixed temperature of the image-image similarities (not the learnable temp)


class TextAssignment(NamedTuple):
    """For each caption ``b``: the batch rows of its two images and the 3-way label."""

    first: torch.Tensor  # [B] long, batch row of the image attended by the even fusion layers
    second: torch.Tensor  # [B] long, batch row of the image attended by the odd fusion layers
    labels: torch.Tensor  # [B] long: 0 = own image first, 1 = own image second, 2 = neither


@torch.no_grad()
def sample_text_assignment(
    image_feat: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    temperature: float = TA_TEMPERATURE,
) -> TextAssignment:
    """ALBEF's text-assignment pairs for a batch of (image, caption), without a Python loop.

    How ALBEF's ``model_pretrain_nlvr.py`` builds them (and how this reads it):

    * weights = ``softmax(image_feat @ image_feat.T / 0.07)`` per row, then the
      diagonal is set to 0 (not renormalised: sampling normalises each row, so a
      caption's candidates are the other images, weighted by similarity);
    * with probability 2/3 (``rand > 1/3``) one similar image is drawn; the
      caption's own image goes first (label 0) or second (label 1), each with
      probability 1/2 (``rand > 0.5`` gives label 0);
    * otherwise two distinct similar images are drawn without replacement and
      placed in draw order (label 2).

    Here every row draws two images without replacement in ONE ``torch.multinomial``
    call; the pair case uses the first draw, whose distribution is exactly ALBEF's
    single draw. ALBEF draws its coin flips one row at a time (the second only in
    the pair branch); here all flips are drawn at once: the same distribution,
    another random stream. ``image_ids`` (e.g. the batch's ``image_idx``) also
    excludes other batch rows showing the caption's own image, which ALBEF would
    count as "similar" (the fix); a row left with fewer than two candidates falls
    back to ALBEF's own-row exclusion. Needs a batch of at least 3 (ALBEF fails
    on smaller batches too).
    """
    batch = image_feat.shape[0]
    if batch < 3:
        raise ValueError(
            f"text assignment needs a batch of at least 3 image-caption pairs (two images other than the "
            f"caption's own are drawn), got {batch}; raise data.batch_size or keep drop_last=True"
        )
    feat = image_feat.float()
    weights = (feat @ feat.T / temperature).softmax(dim=1)
    own = torch.eye(batch, dtype=torch.bool, device=feat.device)
    weights = weights.masked_fill(own, 0.0)
    if image_ids is not None:
        same = image_ids[:, None] == image_ids[None, :]
        excluded = weights.masked_fill(same, 0.0)
        enough = (excluded > 0).sum(dim=1, keepdim=True) >= 2
        weights = torch.where(enough, excluded, weights)
    drawn = torch.multinomial(weights, 2, replacement=False, generator=generator)  # [B, 2]
    coins = torch.rand(batch, 2, generator=generator, device=feat.device)
    pair = coins[:, 0] > 1.0 / 3.0
    own_first = coins[:, 1] > 0.5
    rows = torch.arange(batch, device=feat.device)
    similar, other = drawn[:, 0], drawn[:, 1]
    first = torch.where(pair & own_first, rows, similar)
    second = torch.where(pair, torch.where(own_first, similar, rows), other)
    labels = torch.where(pair, torch.where(own_first, 0, 1), 2)
    return TextAssignment(first, second, labels)


# --- NLVR2 fine-tuning -------------------------------------------------------------------------------
@register_task(
    "nlvr", "NLVR2 (paired fusion layers, 2-way classifier)",
    datamodule=NLVRDataModule,
    heads={"fusion_streams": 2, "classifier_classes": 2},
    fresh_ok={"cls_head.": "new NLVR2 classifier (ALBEF initialises it fresh)"},
    optim=NLVR_OPTIM,
    training_loss="classification_losses",
    result_name="nlvr_test",
    title="NLVR2",
    summary=(SummaryMetric("acc", "accuracy"),),
)
class NLVRModule(ClassifierModule):
    """NLVR2 fine-tuning: a 2-way classifier on the fused [CLS] of text attending an image pair.

    The head flags (``fusion_streams=2``, ``classifier_classes=2``, no projections,
    ITM, MLM, decoder or TA head) are set here; ``arch`` gives the sizes. Loss:
    ``(1 - alpha) * CE + alpha * soft-CE(teacher logits)`` with the EMA teacher
    running the same two-image path (ALBEF's momentum distillation; ``alpha``
    ramps from 0 over epoch 0 when ``alpha_warmup``). Validation and test report
    accuracy (``val/acc``, ``test/acc``, in %) of the online model; the test
    ends with a table and ``nlvr_test.json`` next to the majority-class rate.

    Momentum copies: ALBEF's ``NLVR.py`` copies the momentum model *before*
    loading the TA checkpoint, so its teacher starts from BERT and a random ViT
    (a bug whose effect fades as the EMA catches up). By default the teacher is
    made from the loaded weights (LAVIS's fix; momentum weights the file carries
    are used as they are). ``albef_momentum_before_load=True`` keeps the whole
    teacher at its initial weights, reproducing ALBEF with its released TA file,
    which has no momentum weights (ALBEF would still load momentum weights from a
    file that had them).

    Args:
        arch: model sizes (ALBEF-base at 384 px by default); the NLVR2 head flags are forced.
        optim: AdamW + schedule (default: ALBEF's NLVR.yaml, lr 2e-5, 100 warm-up
            steps from 1e-5, cosine to 1e-6).
        alpha: distillation weight (ALBEF: 0.4).
        alpha_warmup: ramp alpha from 0 over the first epoch (ALBEF ``warm_up: True``).
        distill: train with the momentum teacher (ALBEF: true).
        momentum: EMA coefficient of the teacher (ALBEF: 0.995).
        init_from: TA checkpoint (this project's ``TextAssignmentModule`` checkpoint or
            ALBEF's ``pretrain_model_nlvr.pth``) or a pretraining checkpoint.
        albef_momentum_before_load: reproduce ALBEF's teacher initialisation (see above).
        text_dropout: the text and fusion encoders' dropout for this run (None: ``arch``'s), e.g. 0 for fine-tuning.
    """

    class_names = ("False", "True")

    def __init__(
        self,
        arch: ALBEFConfig | None = None,
        optim: OptimConfig | None = None,
        alpha: float = 0.4,
        alpha_warmup: bool = True,
        distill: bool = True,
        momentum: float = 0.995,
        init_from: str | None = None,
        albef_momentum_before_load: bool = False,
        text_dropout: float | None = None,
    ) -> None:
        super().__init__(
            self.task_spec.arch(arch), optim or self.task_spec.optim, alpha, alpha_warmup, distill, momentum,
            init_from, albef_momentum_before_load, text_dropout=text_dropout,
        )
        self.load_init_weights()

    def forward(self, image0: torch.Tensor, image1: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """Online-model logits ``[B, 2]``; class 1 = "True"."""
        return nlvr_logits(self.model, image0, image1, input_ids, attention_mask)

    def logits(self, model: ALBEF, batch: dict[str, Any]) -> torch.Tensor:
        """Class logits ``[B, 2]`` of ``model`` (online or teacher) for an NLVR2 batch."""
        return nlvr_logits(model, batch["image0"], batch["image1"], batch["input_ids"], batch["attention_mask"])


# --- text-assignment pretraining ----------------------------------------------------------------------
@register_task(
    "nlvr_pretrain", "NLVR2 text-assignment pretraining",
    datamodule=PretrainDataModule,
    heads={"fusion_streams": 2, "projections": True, "ta_head": True},
    teacher=False,
    fresh_ok={"ta_head.": "new text-assignment head (ALBEF initialises it fresh)"},
    image_res=256,
    optim=TA_OPTIM,
)
class TextAssignmentModule(ALBEFModule):
    """NLVR2's text-assignment pretraining (ALBEF's ``Pretrain_nlvr.py``).

    On image-caption batches (``PretrainDataModule``), each caption is fused with a
    sampled image pair and ``ta_head`` (Linear(H, 3) on the fused [CLS]) classifies
    whether the caption's image is first (0), second (1) or absent (2); the pairs
    come from :func:`sample_text_assignment` (image-image similarities of
    ``vision_proj([CLS])``, computed without gradient). Loss: cross-entropy, no
    teacher and no distillation. ``text_proj`` and the temperature exist (ALBEF's
    TA checkpoint has them) but are unused, so multi-GPU runs need
    ``strategy: ddp_find_unused_parameters_true``, as ALBEF's ``find_unused_parameters``.

    ALBEF's recipe: one epoch at 256 px, batch 64 per GPU, lr 2e-5 after 100
    warm-up steps at 1e-5, starting from a pretraining checkpoint, whose fusion
    layer ``k`` seeds both members of pair ``k``.

    Args:
        arch: model sizes (ALBEF-base at 256 px by default); the TA head flags are forced
            (paired fusion, projections, ``ta_head``).
        optim: AdamW + schedule (default: ALBEF's NLVR_pretrain.yaml).
        init_from: pretraining checkpoint (this project's or an official ALBEF file).
        text_dropout: the text and fusion encoders' dropout for this run (None: ``arch``'s), e.g. 0 for fine-tuning.
        exclude_same_image: do not draw other batch rows that show the caption's own image
            (by ``image_idx``) as "similar" images; ALBEF excludes only the caption's own row.
    """

    def __init__(
        self,
        arch: ALBEFConfig | None = None,
        optim: OptimConfig | None = None,
        init_from: str | None = None,
        exclude_same_image: bool = True,
        text_dropout: float | None = None,
    ) -> None:
        super().__init__(
            self.task_spec.arch(arch), optim or self.task_spec.optim, alpha=0.0, alpha_warmup=False, distill=False,
            init_from=init_from, text_dropout=text_dropout,
        )
        self.exclude_same_image = exclude_same_image
        self.load_init_weights()

    def text_assignment_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy of ``ta_head`` on freshly sampled image pairs, and its accuracy."""
        image = self.model.encode_image(batch["image"])
        image_ids = batch.get("image_idx") if self.exclude_same_image else None
        pairs = sample_text_assignment(image.feat.detach(), image_ids, generator)
        fused = fuse_pair(
            self.model, image.embeds[pairs.first], image.embeds[pairs.second],
            batch["input_ids"], batch["attention_mask"], first_token_only=True,
        )
        logits = self.model.ta_head(fused[:, 0])
        loss = distilled_cross_entropy(logits, pairs.labels)
        return {"loss": loss, "acc": 100.0 * (logits.argmax(dim=-1) == pairs.labels).float().mean()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if is_empty_batch(batch):
            return None
        losses = self.text_assignment_loss(batch)
        self.log_losses("train", losses, batch_size=batch["image"].shape[0])
        return losses["loss"]
