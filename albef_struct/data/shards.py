"""Image-caption pairs as tar shards (webdataset): written once from ALBEF JSON, streamed while training.

A shard folder holds ``shard-NNNNNN.tar`` files and ``shards.json``, the manifest: each
shard's file and sample count, the schema, and the record count ``N``. One sample is one
record: its image file's bytes (extension kept) and a JSON of ``caption``, ``index`` (the
record's place in the source JSON files: the stable id the decomposable loss keeps its
per-sample state under), ``image_idx`` and the original ``image`` path.

Streaming (:class:`ShardStream`): the shards are dealt once, round robin, to the
``world_size x max(num_workers, 1)`` streams (stream ``g`` of rank ``r``, worker ``w`` is
``r * workers + w`` and reads shards ``g, g + S, g + 2S, ...``). Each epoch a stream reads its
shards in an order drawn from (seed, epoch, stream), through a shuffle buffer seeded the
same way, and yields exactly ``quota`` samples: the smallest stream's count, rounded down
to whole batches. So every rank has the same number of full batches (DDP needs that), and
``left_out_per_epoch`` samples of the larger streams are not seen in an epoch (other ones
each epoch; none when the shards split evenly). Captions and augmentations are drawn from
(seed, epoch, index) as in the JSON path, so a sample looks the same in both formats.

Resuming mid-epoch is exact when the world size and ``num_workers`` are unchanged: the
loader's state (epoch, batches done) travels in Lightning checkpoints, and each stream
skips the samples it had already yielded (read, not decoded) in the same order.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .bad_records import BadRecordError, SkipReport
from .datasets.base import Transform, seeded_transform
from .datasets.image_text import _contiguous_ids, choose_caption, second_view
from .images import decode_image_bytes
from .records import load_records
from .text import pre_caption
from .text_augment import WordDropSwap

__all__ = ["MANIFEST", "ShardLoader", "ShardManifest", "ShardStream", "write_shards"]

MANIFEST = "shards.json"
SHARD_PATTERN = "shard-%06d.tar"
SHARD_SCHEMAS = ("pretrain", "retrieval_train")


@dataclass(frozen=True)
class ShardManifest:
    """What a shard folder holds: its shard files (absolute), their sample counts, schema and record count."""

    folder: Path
    shards: tuple[Path, ...]
    counts: tuple[int, ...]
    schema: str
    total: int

    @classmethod
    def read(cls, folder: str | Path) -> "ShardManifest":
        folder = Path(folder)
        path = folder / MANIFEST
        fix = "write the folder with `python -m albef_struct.data_prep.make_shards`"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {MANIFEST}; with data.init_args.format: shards every train file must "
                                    f"be a shard folder ({fix})")
        try:
            values = json.loads(path.read_text())
            shards = tuple(folder / entry["file"] for entry in values["shards"])
            counts = tuple(int(entry["count"]) for entry in values["shards"])
            manifest = cls(folder, shards, counts, str(values["schema"]), int(values["total"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a shard manifest ({type(err).__name__}: {err}); {fix}") from err
        missing = [str(s) for s in manifest.shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"{path} names {len(missing)} shard(s) that are missing, e.g. {missing[0]}; "
                                    f"copy the whole folder, or {fix} again")
        if sum(counts) > manifest.total:
            raise ValueError(f"{path}: the shards hold {sum(counts)} samples but total is {manifest.total}; {fix} again")
        return manifest


def write_shards(files: Sequence[str | Path], out: str | Path, image_root: str | Path | None = None,
                 schema: str = "pretrain", shard_size: int = 1000, skip_bad_records: bool = False,
                 progress: Callable[[str], None] | None = None) -> tuple[ShardManifest, SkipReport]:
    """Write the records of ALBEF JSON ``files`` (validated as the JSON path validates them) as tar shards.

    ``index`` counts records across ``files`` in order, as :class:`PretrainDataset` does; a skipped
    record (``skip_bad_records``: bad JSON fields, missing or unreadable image) keeps its index unused
    and is counted in the returned report.
    """
    if schema not in SHARD_SCHEMAS:
        raise ValueError(f"shards hold image-caption pairs: schema must be one of {SHARD_SCHEMAS}, not {schema!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("shard-*.tar")):
        raise FileExistsError(f"{out} already holds shards: write to an empty folder (or delete them first)")
    report = SkipReport()
    records = []
    for path in files:
        records += load_records(path, schema, image_root=image_root, skip_bad_records=skip_bad_records, report=report)
    image_key = "image_id" if schema == "retrieval_train" else None
    image_idx = _contiguous_ids([rec[image_key] if image_key else rec.image_paths[0] for rec in records])
    entries: list[dict[str, Any]] = []
    with wds.ShardWriter(str(out / SHARD_PATTERN), maxcount=shard_size, verbose=0) as sink:
        for index, rec in enumerate(records):
            path = rec.image_paths[0]
            try:
                data = path.read_bytes()
                decode_image_bytes(data, source=rec.source, record_index=rec.row, path=str(path))
            except (OSError, BadRecordError) as err:
                bad = err if isinstance(err, BadRecordError) else BadRecordError(
                    source=rec.source, row=rec.row, field="image", reason="missing image", path=str(path),
                    found=f"cannot read the file ({err})", expected="a readable image file",
                    hint="Check image_root and the path in the JSON, or pass --skip-bad-records to skip and count it.")
                if not skip_bad_records:
                    raise bad from None
                report.add(bad)
                continue
            meta = {"caption": rec["caption"], "index": index, "image_idx": int(image_idx[index]),
                    "image": rec["image"]}
            sink.write({"__key__": f"{index:09d}", path.suffix.lstrip(".").lower() or "img": data,
                        "json": json.dumps(meta).encode()})
            name = Path(sink.fname).name
            if not entries or entries[-1]["file"] != name:
                if progress and entries:
                    progress(f"{entries[-1]['file']}: {entries[-1]['count']} samples")
                entries.append({"file": name, "count": 0})
            entries[-1]["count"] += 1
    if not entries:
        raise ValueError(f"no usable records in {[str(f) for f in files]}: nothing to write. {report.summary()}")
    manifest = {"schema": schema, "total": len(records), "shards": entries,
                "sources": [str(Path(f)) for f in files], "skipped": report.total}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return ShardManifest.read(out), report


class ShardStream(IterableDataset):
    """Training samples ``{image, text, index, image_idx}`` streamed from shard folders (see the module doc).

    Args:
        folders: shard folders; ``index`` of the second folder's samples is offset by the first's total.
        transform: PIL image -> tensor (seeded per sample).
        batch_size, num_workers: the loader's, which set the streams and their quota.
        max_words: ``pre_caption`` word limit.
        seed: seed of shard orders, the shuffle buffer, caption choice and augmentation.
        shuffle_buffer: samples held by each stream's shuffle buffer (0: shard order only).
        skip_bad_records: an undecodable image yields None (the collate drops and counts it) instead of an error.
        text_augment: when given, samples also carry the second view (``image_aug``, ``text_aug``).
    """

    def __init__(self, folders: Sequence[str | Path], transform: Transform, batch_size: int, num_workers: int = 0,
                 max_words: int = 30, seed: int = 0, shuffle_buffer: int = 1000, skip_bad_records: bool = False,
                 text_augment: WordDropSwap | None = None) -> None:
        super().__init__()
        self.manifests = [ShardManifest.read(f) for f in folders]
        if not self.manifests:
            raise ValueError("no shard folder given")
        offsets = [0]
        for manifest in self.manifests[:-1]:
            offsets.append(offsets[-1] + manifest.total)
        self.shards = [(path, count, offset) for manifest, offset in zip(self.manifests, offsets)
                       for path, count in zip(manifest.shards, manifest.counts)]
        self.total = offsets[-1] + self.manifests[-1].total
        self.transform, self.batch_size, self.num_workers = transform, int(batch_size), int(num_workers)
        self.workers = max(self.num_workers, 1)  # streams per rank: the main process counts as one
        self.max_words, self.seed, self.shuffle_buffer = max_words, int(seed) % 2**32, int(shuffle_buffer)
        self.skip_bad_records, self.text_augment = skip_bad_records, text_augment
        # shared with persistent workers: the epoch and where in it the next pass starts
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()
        self._resume = torch.zeros((), dtype=torch.long).share_memory_()
        self.configure(rank=0, world_size=1)

    def configure(self, rank: int, world_size: int) -> None:
        """Deal the shards to this rank's streams; refuse a layout where a stream would get none."""
        streams = world_size * self.workers
        if len(self.shards) < streams:
            raise ValueError(f"{len(self.shards)} shard(s) for {streams} streams (world size {world_size} x "
                             f"{self.workers} loader worker(s)): every stream needs a shard. Write smaller shards "
                             "(make_shards --shard-size) or use fewer workers.")
        self.rank, self.world_size = int(rank), int(world_size)
        sizes = [sum(self.shards[i][1] for i in range(g, len(self.shards), streams)) for g in range(streams)]
        self.quota = min(sizes) // self.batch_size * self.batch_size
        if self.quota == 0:
            raise ValueError(f"the smallest of the {streams} streams holds {min(sizes)} samples, fewer than one batch "
                             f"of {self.batch_size}: write fewer, larger shards, or lower batch_size or num_workers")
        self.left_out_per_epoch = sum(sizes) - streams * self.quota

    def __len__(self) -> int:
        """The record count ``N`` (the range of ``index``), as for the JSON datasets."""
        return self.total

    @property
    def batches_per_epoch(self) -> int:
        """Full batches each rank trains on per epoch."""
        return self.quota // self.batch_size * self.workers

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def resume_at(self, batches: int) -> None:
        """Start the next pass ``batches`` batches into the epoch (the same batches as without the interruption)."""
        self._resume.fill_(int(batches))

    def stream_samples(self, stream: int, epoch: int) -> Iterator[dict[str, Any]]:
        """Raw samples of global stream ``stream`` in ``epoch``'s order (all of them, before the quota)."""
        mine = list(range(stream, len(self.shards), self.world_size * self.workers))
        rng = random.Random(f"{self.seed}/{epoch}/{stream}")
        rng.shuffle(mine)
        urls = [str(self.shards[i][0]) for i in mine]
        offsets = {str(self.shards[i][0]): self.shards[i][2] for i in mine}
        pipeline = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False,
                                  seed=0).shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
        for sample in pipeline:
            sample["__offset__"] = offsets[sample["__url__"]]
            yield sample

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        done = int(self._resume)
        # the loader's round robin restarts at worker 0: each worker takes the stream whose batch comes next
        local = (worker + done) % self.workers
        skip = max(0, (done - local + self.workers - 1) // self.workers) * self.batch_size
        epoch = self.epoch
        stream = self.rank * self.workers + local
        for sample in islice(self.stream_samples(stream, epoch), skip, self.quota):
            yield self.decode(sample, epoch)

    def decode(self, sample: Mapping[str, Any], epoch: int) -> dict[str, Any] | None:
        """One training item from a raw shard sample (None for a bad one under ``skip_bad_records``)."""
        shard = sample.get("__url__", "?")
        try:
            meta = json.loads(sample["json"])
            index = int(meta["index"]) + int(sample.get("__offset__", 0))
            image_field = next(k for k in sample if not k.startswith("__") and k != "json")
            image = decode_image_bytes(sample[image_field], source=shard, record_index=index, path=meta.get("image", "?"))
        except BadRecordError:
            if self.skip_bad_records:
                return None
            raise
        except (KeyError, StopIteration, ValueError, TypeError) as err:
            if self.skip_bad_records:
                return None
            raise BadRecordError(source=shard, row=None, field=None, reason="malformed shard sample",
                                 found=f"sample {sample.get('__key__')!r} without a readable json and image ({err!r})",
                                 expected="an image file and a json of caption and index",
                                 hint="Rewrite the shards with albef_struct.data_prep.make_shards.") from None
        text = pre_caption(choose_caption(meta["caption"], self.seed, epoch, index), self.max_words)
        out: dict[str, Any] = {"text": text, "index": index, "image_idx": int(meta.get("image_idx", index))}
        transformed = lambda img, i, view: seeded_transform(self.transform, img, (self.seed, epoch, i, view))  # noqa: E731
        if self.text_augment is None:
            out["image"] = transformed(image, index, 0)
        else:
            out.update(second_view(image, text, transformed, self.text_augment, (self.seed, epoch, index), index))
        return out


class ShardLoader(DataLoader):
    """The training loader of a :class:`ShardStream`: its length is the rank's batches per epoch, and its place
    in the epoch travels in Lightning checkpoints (``state_dict`` / ``load_state_dict``).

    ``epoch_of`` tells the epoch about to run (the DataModule passes the trainer's); without it the loader
    counts its passes.
    """

    def __init__(self, dataset: ShardStream, collate_fn: Callable, epoch_of: Callable[[], int | None] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))  # starting a pass draws no global random number
        super().__init__(dataset, batch_size=dataset.batch_size, drop_last=False, collate_fn=collate_fn,
                         num_workers=dataset.num_workers, **kwargs)
        self.epoch_of = epoch_of
        self._passes, self._epoch, self._yielded, self._resume_at = 0, 0, 0, (None, 0)

    def __len__(self) -> int:
        return self.dataset.batches_per_epoch

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch_of() if self.epoch_of is not None else None
        self._epoch = self._passes if epoch is None else int(epoch)
        self._passes = self._epoch + 1
        resume_epoch, resume_batches = self._resume_at
        done = resume_batches if resume_epoch == self._epoch else 0
        self._resume_at = (None, 0)
        self.dataset.set_epoch(self._epoch)
        self.dataset.resume_at(done)
        self._yielded = done
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._epoch), "batches": int(self._yielded), "length": len(self)}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        epoch, done = int(state_dict["epoch"]), int(state_dict["batches"])
        if done >= len(self):  # saved at an epoch's end: the next one starts from its beginning
            epoch, done = epoch + 1, 0
        self._resume_at = (epoch, done)
        self._passes = epoch
