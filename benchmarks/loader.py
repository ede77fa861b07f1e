"""Training-loader benchmarks: JSON + image files against tar shards.

    python -m benchmarks.loader --out results/bench                       # memory at 10k/100k/1M records, speed
    python -m benchmarks.loader --sizes 2000 20000 --workers 1 2 --throughput-images 200   # a quick run

Memory: synthetic pretraining records (short captions, tiny images from a pool of 64 files
for the JSON path; the shards hold every sample's bytes) are loaded by
``PretrainDataModule`` with 1, 2 and 4 persistent loader workers, a few batches are drawn,
and the loader's memory is read from ``/proc``: the proportional set size (PSS) summed over
the main process and its workers (shared pages counted once in all), and the main process's
RSS, each minus the same process before the DataModule was built. Each configuration runs
in a fresh subprocess. The growth per record is the slope between the smallest and the
largest record count.

Speed: decoded and augmented samples per second of one loader worker on distinct 96 px JPEG
images (ALBEF's pretraining transform at 96 px), JSON + files against shards.

Writes ``loader.json`` and prints both tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from albef_struct.metrics.report import format_table, write_json

REPO = Path(__file__).resolve().parents[1]
POOL = 64
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")


def synthetic_records(root: Path, n: int, image_size: int = 8, distinct: bool = False) -> Path:
    """``root/pretrain.json`` with ``n`` captioned records; images from a pool of 64 (or ``distinct`` ones)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    count = n if distinct else POOL
    for k in range(count):
        pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{k:07d}.jpg", quality=90)
    records = [{"image": f"img/{i % count:07d}.jpg",
                "caption": f"a {COLOURS[i % 8]} {SHAPES[i % 6]} next to a {COLOURS[(i // 8) % 8]} one, picture {i}"}
               for i in range(n)]
    path = root / "pretrain.json"
    path.write_text(json.dumps(records))
    return path


def prepare(root: Path, n: int, image_size: int = 8, distinct: bool = False) -> dict[str, str]:
    """The JSON file and the shard folder of ``n`` synthetic records under ``root`` (made once)."""
    from albef_struct.data.shards import write_shards

    json_file = root / "pretrain.json"
    if not json_file.is_file():
        synthetic_records(root, n, image_size, distinct)
    shards = root / "shards"
    if not (shards / "shards.json").is_file():
        write_shards([json_file], shards, image_root=root, shard_size=max(1000, n // 64))
    return {"json": str(json_file), "shards": str(shards), "root": str(root)}


# --- measured in a subprocess --------------------------------------------------------------------
def _kb(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def memory(pid: int) -> dict[str, float]:
    """Main-process RSS and PSS summed over it and its children, in MB."""
    pids = [pid, *_children(pid)]
    pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss") for p in pids)
    return {"main_rss_mb": _kb(f"/proc/{pid}/status", "VmRSS") / 1024, "pss_mb": pss / 1024, "processes": len(pids)}


def build_loader(files: dict[str, str], fmt: str, workers: int, image_res: int, batch_size: int):
    from albef_struct.data import PretrainDataModule

    train = [files["shards"] if fmt == "shards" else files["json"]]
    module = PretrainDataModule(train_files=train, format=fmt, image_root=files["root"], image_res=image_res,
                                batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0,
                                randaugment=False, shuffle_buffer=256)
    module.setup("fit")
    return module.train_dataloader()


def measure_memory(files: dict[str, str], fmt: str, workers: int) -> dict[str, float]:
    before = memory(os.getpid())
    loader = build_loader(files, fmt, workers, image_res=8, batch_size=64)
    batches = iter(loader)
    for _ in range(3 * max(workers, 1)):
        next(batches)
    after = memory(os.getpid())
    return {"main_rss_growth_mb": after["main_rss_mb"] - before["main_rss_mb"], "pss_mb": after["pss_mb"],
            "pss_growth_mb": after["pss_mb"] - before["pss_mb"], "processes": after["processes"]}


def measure_speed(files: dict[str, str], fmt: str) -> dict[str, float]:
    loader = build_loader(files, fmt, workers=1, image_res=96, batch_size=32)
    batches = iter(loader)
    next(batches)  # the worker has started
    start, samples = time.perf_counter(), 0
    for batch in batches:
        samples += int(batch["image"].shape[0])
    seconds = time.perf_counter() - start
    return {"samples": samples, "seconds": seconds, "samples_per_s_per_worker": samples / seconds}


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration in a fresh interpreter, so its memory is its own."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.loader", "--one", json.dumps(spec)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"loader benchmark {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(out: Path, sizes: list[int], workers: list[int], throughput_images: int, scratch: Path) -> dict[str, Any]:
    rows = []
    for n in sizes:
        start = time.perf_counter()
        files = prepare(scratch / f"records_{n}", n)
        print(f"{n} records: data written in {time.perf_counter() - start:.0f} s", flush=True)
        for fmt in ("json", "shards"):
            for w in workers:
                rows.append({"records": n, "format": fmt, "workers": w,
                             **run_one({"kind": "memory", "files": files, "format": fmt, "workers": w})})
                print(json.dumps(rows[-1]), flush=True)
    slopes = []
    for fmt in ("json", "shards"):
        for w in workers:
            cells = {r["records"]: r for r in rows if r["format"] == fmt and r["workers"] == w}
            lo, hi = min(cells), max(cells)
            slopes.append({"format": fmt, "workers": w, "from": lo, "to": hi,
                           "pss_growth_mb": cells[hi]["pss_growth_mb"] - cells[lo]["pss_growth_mb"],
                           "bytes_per_record": 1e6 * (cells[hi]["pss_growth_mb"] - cells[lo]["pss_growth_mb"]) / (hi - lo)})
    speed_files = prepare(scratch / f"images_{throughput_images}", throughput_images, image_size=96, distinct=True)
    speed = [{"format": fmt, **run_one({"kind": "speed", "files": speed_files, "format": fmt})}
             for fmt in ("json", "shards")]
    payload = {"memory": rows, "growth": slopes, "speed": speed, "cpu_count": os.cpu_count()}
    write_json(out / "loader.json", payload)
    print(format_table(["records", "format", "workers", "PSS growth MB", "main RSS growth MB"],
                       [[r["records"], r["format"], r["workers"], r["pss_growth_mb"], r["main_rss_growth_mb"]] for r in rows]))
    print(format_table(["format", "workers", "records", "PSS growth MB", "bytes/record"],
                       [[s["format"], s["workers"], f"{s['from']}->{s['to']}", s["pss_growth_mb"], s["bytes_per_record"]]
                        for s in slopes], float_format="{:.1f}"))
    print(format_table(["format", "samples/s per worker"], [[s["format"], s["samples_per_s_per_worker"]] for s in speed],
                       float_format="{:.0f}"))
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--throughput-images", type=int, default=2000)
    parser.add_argument("--scratch", type=Path, help="folder for the synthetic data (default: a temporary one)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        spec = json.loads(args.one)
        result = (measure_memory(spec["files"], spec["format"], spec["workers"]) if spec["kind"] == "memory"
                  else measure_speed(spec["files"], spec["format"]))
        print(json.dumps(result))
        return 0
    if args.scratch:
        run(args.out, args.sizes, args.workers, args.throughput_images, args.scratch)
        return 0
    with tempfile.TemporaryDirectory(prefix="albef_loader_bench_") as scratch:
        run(args.out, args.sizes, args.workers, args.throughput_images, Path(scratch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
