"""Write ALBEF image-caption JSON files and their images as tar shards, for ``data.init_args.format: shards``.

    python -m albef_struct.data_prep.make_shards --json data/cc3m.json data/sbu.json --image-root /data/images \\
        --out /data/shards/pretrain --shard-size 5000
    python -m albef_struct.data_prep.make_shards --json coco_train.json --schema retrieval_train --image-root coco \\
        --out shards/coco_train

Records are validated as the JSON path validates them (a bad record or an unreadable image is an
error naming the file, record and image, or with ``--skip-bad-records`` a counted skip); each
sample keeps its record's ``index`` across the files in order, the id the decomposable loss needs.
Then train with ``--data.init_args.format shards --data.init_args.train_files [OUT]``. See
:mod:`albef_struct.data.shards` for how the shards are split across ranks and workers.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from albef_struct.data.shards import SHARD_SCHEMAS, write_shards


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", nargs="+", required=True, type=Path, help="ALBEF annotation file(s), in order")
    parser.add_argument("--out", required=True, type=Path, help="an empty folder for the shards and shards.json")
    parser.add_argument("--image-root", type=Path, help="folder relative image paths are joined to "
                                                        "(default: each JSON file's folder)")
    parser.add_argument("--schema", choices=SHARD_SCHEMAS, default="pretrain")
    parser.add_argument("--shard-size", type=int, default=1000,
                        help="samples per shard (use at least world size x workers shards in all)")
    parser.add_argument("--skip-bad-records", action="store_true", help="skip and count bad records instead of failing")
    args = parser.parse_args(argv)
    manifest, report = write_shards(args.json, args.out, args.image_root, args.schema, args.shard_size,
                                    args.skip_bad_records, progress=print)
    print(f"{args.out}: {sum(manifest.counts)} samples of {manifest.total} records in {len(manifest.shards)} shard(s)"
          + (f"; {report.summary()}" if report.total else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
