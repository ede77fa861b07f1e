"""The grounding DataModule: expression-image pairs to fine-tune on, records with boxes to evaluate on."""

from __future__ import annotations

from torch.utils.data import DataLoader

from ..grounding import GROUNDING_MAX_TOKENS, GroundingCollate, GroundingEvalDataset
from ..transforms import test_transform
from .image_text import RetrievalDataModule

__all__ = ["GroundingDataModule"]


class GroundingDataModule(RetrievalDataModule):
    """Grounding fine-tuning (retrieval-train pairs) and evaluation (``grounding`` records, one loader).

    Args:
        train_file: retrieval-train JSON of expression-image pairs (``image_id``: the image).
        val_file, test_file: ``grounding`` records with the referred box and the proposals to rank.
        **kwargs: the ``RetrievalDataModule`` / ``ALBEFDataModule`` arguments.
    """

    def train_image_transform(self):
        return test_transform(self.image_res)

    def _setup_eval(self, split: str, file: str | None) -> None:
        if file is None:
            return
        self.eval_sets[split] = self._build(split, lambda: GroundingEvalDataset(
            file, self.image_root, self.eval_image_transform(), self.max_words, **self.dataset_options()),
            image_cache=False)  # Grad-CAM runs the image encoder: the images, never cached tokens

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        if split not in self.eval_sets:
            return []
        collate = GroundingCollate(self.tokenizer, GROUNDING_MAX_TOKENS)
        return [self._eval_loader(self.eval_sets[split], collate)]
