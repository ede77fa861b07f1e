"""A loaded model with its image transform and tokenizer: encode, compare, match, classify, answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

from albef_struct.inference.errors import InferenceInputError
from albef_struct.data.collate import RETRIEVAL_EVAL_TOKENS
from albef_struct.data.tokenizer import ALBEFTokenizer
from albef_struct.data.transforms import test_transform
from albef_struct.inference.inputs import Images, Texts, count_texts, image_batch, image_list, text_chunks
from albef_struct.inference.gradcam import gradcam
from albef_struct.inference.loading import LoadedCheckpoint
from albef_struct.models import ALBEF
from albef_struct.tasks.passes import NLVR_CLASSES, VE_LABELS, nlvr_logits, ve_logits
from albef_struct.tasks.vqa_answers import question_states, rank_answers


class Prediction(NamedTuple):
    """One SNLI-VE or NLVR2 prediction: the label and every class's probability."""

    label: str
    probabilities: dict[str, float]


class RankedAnswer(NamedTuple):
    answer: str
    probability: float  # a softmax over the re-scored top-k candidates


class Explanation(NamedTuple):
    """Grad-CAM of one image-text match (see :mod:`albef_struct.inference.gradcam`)."""

    tokens: list[str]  # the text's WordPieces, [CLS] first (ITC mode: one entry for the whole text)
    token_maps: torch.Tensor  # [L, h, w] on the ViT's patch grid
    text_map: torch.Tensor  # [h, w]: the mean of the tokens' maps
    match_probability: float | None  # ITM match probability (None in ITC mode)
    score: float  # the score explained: ITM match logit, or ITC cosine similarity
    layer: int  # the fusion layer (ITM) or ViT block (ITC) explained
    mode: str


class InferenceModel:
    """A checkpoint's model in evaluation mode on ``device`` (optionally in ``dtype``), with the image
    ``transform`` and ``tokenizer`` it expects. Every call runs under :func:`torch.inference_mode`
    in batches of ``batch_size``; embeddings and scores come back as float32 on the CPU.

    Images: PIL images, file paths, or transformed tensors (``[3, H, W]`` or ``[B, 3, H, W]``).
    Texts: strings (cleaned as the task's dataset cleans them) or a token dict
    ``{"input_ids", "attention_mask"}`` used as it is.
    """

    def __init__(self, loaded: LoadedCheckpoint, tokenizer: ALBEFTokenizer, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, batch_size: int = 64) -> None:
        self.model: ALBEF = loaded.model.to(device=device, dtype=dtype).eval()
        self.kind, self.source = loaded.kind, loaded.source
        self.report = loaded.report
        self.tokenizer = tokenizer
        self.transform = test_transform(self.config.vision.img_size)
        self.device, self.dtype, self.batch_size = torch.device(device), dtype, batch_size
        self.answer_list = loaded.answer_list
        self._answer_tokens: tuple[list[str], dict[str, torch.Tensor]] | None = None

    @property
    def config(self):
        return self.model.config

    def __repr__(self) -> str:
        return (f"InferenceModel({self.kind} model from {self.source}, {self.config.vision.img_size} px, "
                f"device={self.device}, dtype={self.dtype or torch.float32})")

    # --- inputs ---------------------------------------------------------------------------------------
    def _needs(self, what: str, present: bool, kinds: str) -> None:
        if not present:
            raise InferenceInputError(f"{self.source} is a {self.kind} model without {what}; this call needs {kinds}")

    def _images(self, images: Images) -> list[torch.Tensor]:
        items = image_list(images)
        chunks = [items[s:s + self.batch_size] for s in range(0, len(items), self.batch_size)]
        return [(c if isinstance(c, torch.Tensor) else image_batch(c, self.transform)).to(self.device, self._float)
                for c in chunks]

    def _check_vocabulary(self) -> None:
        """Token ids the tokenizer can produce must have rows in the word embeddings (checked before tokenizing)."""
        if len(self.tokenizer) > self.config.text.vocab_size:
            raise InferenceInputError(
                f"the tokenizer at {self.tokenizer.path} has {len(self.tokenizer)} tokens but {self.source}'s word "
                f"embeddings have {self.config.text.vocab_size} rows; load(..., tokenizer=DIR) with the vocabulary "
                "the model was trained with, or pass token dicts")

    def _texts(self, texts: Texts, kind: str, max_tokens: int | None) -> list[dict[str, torch.Tensor]]:
        if not isinstance(texts, Mapping):
            self._check_vocabulary()
        limit = min(max_tokens or self.config.text.max_position, self.config.text.max_position)
        return [{k: v.to(self.device) for k, v in chunk.items()}
                for chunk in text_chunks(texts, self.tokenizer, kind, limit, self.batch_size)]

    @property
    def _float(self) -> torch.dtype:
        return self.dtype or torch.float32

    @staticmethod
    def _pairs(n_images: int, n_texts: int, shared: bool = True) -> int:
        """How many (image, text) pairs; one image or one text may be shared by all when ``shared``."""
        if n_images != n_texts and not (shared and 1 in (n_images, n_texts)):
            either = " (or one of either)" if shared else ""
            raise InferenceInputError(f"{n_images} images and {n_texts} texts: pass one text per image{either}")
        return max(n_images, n_texts)

    # --- contrastive embeddings -------------------------------------------------------------------------
    def encode_image(self, images: Images) -> torch.Tensor:
        """Normalised ITC image embeddings ``[N, embed_dim]``."""
        self._needs("contrastive projections", self.config.projections, "a pretraining or retrieval checkpoint")
        with torch.inference_mode():
            return torch.cat([self.model.encode_image(b).feat.float().cpu() for b in self._images(images)])

    def encode_text(self, texts: Texts) -> torch.Tensor:
        """Normalised ITC text embeddings ``[M, embed_dim]`` (captions: ALBEF's 30-word, 30-token evaluation)."""
        self._needs("contrastive projections", self.config.projections, "a pretraining or retrieval checkpoint")
        with torch.inference_mode():
            return torch.cat([self.model.encode_text(c["input_ids"], c["attention_mask"]).feat.float().cpu()
                              for c in self._texts(texts, "caption", RETRIEVAL_EVAL_TOKENS)])

    def similarity(self, images: Images, texts: Texts) -> torch.Tensor:
        """Cosine similarity ``[N, M]`` of every image with every text (the retrieval evaluator's ITC scores)."""
        return self.encode_image(images) @ self.encode_text(texts).T

    # --- image-text matching ----------------------------------------------------------------------------
    def match(self, images: Images, texts: Texts, logit: bool = False) -> torch.Tensor:
        """ITM probability ``[B]`` that ``texts[i]`` describes ``images[i]`` (one image or one text is shared);
        with ``logit`` the "match" logit instead (the score ALBEF's retrieval re-ranking sorts by)."""
        self._needs("an image-text matching head", self.config.itm_head, "a pretraining or retrieval checkpoint")
        image_batches = self._images(images)
        text_batches = self._texts(texts, "caption", RETRIEVAL_EVAL_TOKENS)
        n = self._pairs(sum(b.shape[0] for b in image_batches), count_texts(texts))
        with torch.inference_mode():
            image_embeds = torch.cat([self.model.encode_image(b).embeds for b in image_batches])
            out = []
            for start in range(0, n, self.batch_size):
                rows = torch.arange(start, min(n, start + self.batch_size))
                tokens = _rows(text_batches, rows, count_texts(texts))
                text = self.model.encode_text(tokens["input_ids"], tokens["attention_mask"]).embeds
                # each distinct image's cross-attention keys and values once per chunk, not once per pair
                images, index = (rows % image_embeds.shape[0]).unique(return_inverse=True)
                fused = self.model.fuse(text, tokens["attention_mask"], image_embeds[images], first_token_only=True,
                                        image_index=index)
                logits = self.model.itm_logits(fused).float()
                out.append((logits[:, 1] if logit else logits.softmax(dim=-1)[:, 1]).cpu())
        return torch.cat(out)

    def explain(self, image: Images, text: str, layer: int | None = None, mode: str = "itm") -> Explanation:
        """Where the model looks for ``text`` in ``image``: Grad-CAM of the ITM match through the cross-attention
        of fusion layer ``layer`` (default: ALBEF's, the third), for the whole text and for each token; or with
        ``mode="itc"`` of the ITC similarity through ViT block ``layer``'s [CLS] attention (one map)."""
        self._needs("an image-text matching head" if mode == "itm" else "contrastive projections",
                    self.config.itm_head if mode == "itm" else self.config.projections,
                    "a pretraining or retrieval checkpoint")
        (pixels,) = self._images(image_list(image)[:1])
        (tokens,) = self._texts([text], "caption", RETRIEVAL_EVAL_TOKENS)
        cam = gradcam(self.model, pixels, tokens["input_ids"], tokens["attention_mask"], mode, layer)
        words = self.tokenizer.tokens(tokens["input_ids"][0].tolist()) if mode == "itm" else ["(whole text)"]
        probability = float(cam.match_probability[0]) if cam.match_probability is not None else None
        return Explanation(words, cam.token_maps[0].float().cpu(), cam.text_map[0].float().cpu(), probability,
                           float(cam.score[0]), cam.layer, cam.mode)

    # --- SNLI-VE and NLVR2 ------------------------------------------------------------------------------
    def predict(self, images: Images | Sequence[tuple], texts: Texts) -> list[Prediction]:
        """SNLI-VE: ``images[i]`` and hypothesis ``texts[i]`` -> entailment/neutral/contradiction.
        NLVR2: ``images[i]`` is a (left, right) pair and ``texts[i]`` the statement -> True/False."""
        self._needs("a classifier head", bool(self.config.classifier_classes), "a fine-tuned SNLI-VE or NLVR2 checkpoint")
        labels = NLVR_CLASSES if self.kind == "nlvr" else VE_LABELS
        self._pairs(len(images) if self.kind == "nlvr" else len(image_list(images)), count_texts(texts), shared=False)
        text_batches = self._texts(texts, "caption", None)
        out: list[Prediction] = []
        with torch.inference_mode():
            if self.kind == "nlvr":
                pairs = list(images)
                lefts, rights = self._images([p[0] for p in pairs]), self._images([p[1] for p in pairs])
                logits = [nlvr_logits(self.model, l, r, t["input_ids"], t["attention_mask"])
                          for l, r, t in zip(lefts, rights, text_batches, strict=True)]
            else:
                logits = [ve_logits(self.model, i, t["input_ids"], t["attention_mask"])
                          for i, t in zip(self._images(images), text_batches, strict=True)]
            for probs in torch.cat(logits).float().softmax(dim=-1).cpu():
                out.append(Prediction(labels[int(probs.argmax())], dict(zip(labels, probs.tolist()))))
        return out

    # --- VQA --------------------------------------------------------------------------------------------
    def answer(self, images: Images, questions: Texts, candidates: Sequence[str] | Mapping[str, torch.Tensor] | None = None,
               k: int = 128, top: int = 1, albef_first_token_double_count: bool = False) -> list[list[RankedAnswer]]:
        """The ``top`` best answers per question, ranked as the VQA evaluation ranks them: the ``k``
        candidates most likely as a first token, re-scored by their whole sequence (ALBEF's own
        scoring counts the first token twice: set the flag for its numbers). ``candidates``: answer
        strings, or their ``[CLS] answer [SEP]`` token dict (answers are then named by row index);
        default: the answer list stored with the checkpoint or given to :func:`load`."""
        self._needs("an answer decoder", bool(self.config.answer_decoder_layers), "a fine-tuned VQA checkpoint")
        answers, tokens = self._candidates(candidates)
        self._pairs(len(image_list(images)), count_texts(questions), shared=False)
        out: list[list[RankedAnswer]] = []
        with torch.inference_mode():
            for image, question in zip(self._images(images), self._texts(questions, "question", None), strict=True):
                states = question_states(self.model, image, question["input_ids"], question["attention_mask"])
                ranked = rank_answers(self.model.answer_decoder, states, question["attention_mask"],
                                      tokens["input_ids"], tokens["attention_mask"], k, albef_first_token_double_count)
                for ids, probs in zip(ranked.ids.tolist(), ranked.probs.float().tolist()):
                    out.append([RankedAnswer(answers[i], p) for i, p in list(zip(ids, probs))[:top]])
        return out

    def _candidates(self, candidates: Sequence[str] | Mapping[str, torch.Tensor] | None,
                    ) -> tuple[list[str], dict[str, torch.Tensor]]:
        if isinstance(candidates, Mapping):
            tokens = {k: candidates[k].to(self.device) for k in ("input_ids", "attention_mask")}
            return [str(i) for i in range(tokens["input_ids"].shape[0])], tokens
        answers = list(candidates) if candidates is not None else self.answer_list
        if not answers:
            raise InferenceInputError(f"{self.source} stores no answer list: pass candidates=[...] (e.g. the answer_list.json "
                             "of the VQA data) or load(..., answer_list=PATH)")
        if self._answer_tokens is None or self._answer_tokens[0] != answers:
            self._check_vocabulary()
            tokens = {k: v.to(self.device) for k, v in self.tokenizer.encode_answers(answers).items()}
            self._answer_tokens = (answers, tokens)
        return self._answer_tokens


def _rows(batches: list[dict[str, torch.Tensor]], rows: torch.Tensor, total: int) -> dict[str, torch.Tensor]:
    """Rows ``rows`` of the concatenated token batches (row ``r % total``), padded to a common length."""
    width = max(b["input_ids"].shape[1] for b in batches)
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    ids = torch.cat([pad(b["input_ids"]) for b in batches])[rows % total]
    mask = torch.cat([pad(b["attention_mask"]) for b in batches])[rows % total]
    keep = int(mask.sum(dim=1).max())
    return {"input_ids": ids[:, :keep], "attention_mask": mask[:, :keep]}
