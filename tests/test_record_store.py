"""Packed records: the same Records the JSON loader made, at a fraction of the memory; the loader benchmark runs."""

from __future__ import annotations

import json
import pickle
import sys

import pytest

from albef_struct.data.datasets import PretrainDataset
from albef_struct.data.record_store import PackedRecords
from albef_struct.data.records import load_records
from albef_struct.data.transforms import test_transform
from benchmarks import loader as loader_bench


def test_packed_records_equal_the_loaded_ones_in_every_field(tmp_path):
    path = loader_bench.synthetic_records(tmp_path, 300)
    records = load_records(path, "pretrain", image_root=tmp_path)
    packed = PackedRecords(records)
    packed.extend(load_records(path, "pretrain", image_root=tmp_path)[:10])
    assert len(packed) == 310
    for original, stored in zip(records + records[:10], packed):
        assert stored == original and stored.image_paths == original.image_paths
        assert (stored.source, stored.row) == (original.source, original.row)
    assert packed[-1].row == 9 and packed[5:7] == records[5:7]
    with pytest.raises(IndexError, match="record 310 of 310"):
        packed[310]
    assert pickle.loads(pickle.dumps(packed))[123] == records[123]  # what spawned loader workers receive


def test_a_packed_record_costs_its_json_not_a_dict(tmp_path):
    path = loader_bench.synthetic_records(tmp_path, 2000)
    records = load_records(path, "pretrain", image_root=tmp_path)
    as_dicts = sum(sys.getsizeof(r) + sum(sys.getsizeof(v) for v in r.values()) + sys.getsizeof(r.image_paths[0])
                   for r in records)
    packed = PackedRecords(records)
    per_record = packed.nbytes / len(packed)
    assert per_record < 200 and per_record < as_dicts / len(records) / 3
    dataset = PretrainDataset(path, tmp_path, test_transform(8))
    assert isinstance(dataset.records, PackedRecords)
    assert dataset[7]["text"] == "a black square next to a red one picture 7" and dataset[7]["image_idx"] == 7


@pytest.mark.slow
def test_loader_benchmark_writes_memory_growth_and_speed(tmp_path):
    payload = loader_bench.run(tmp_path / "out", sizes=[200, 600], workers=[1], throughput_images=64,
                               scratch=tmp_path / "scratch")
    written = json.loads((tmp_path / "out" / "loader.json").read_text())
    assert written["growth"] == payload["growth"]
    assert {(r["records"], r["format"]) for r in written["memory"]} == {(n, f) for n in (200, 600) for f in ("json", "shards")}
    assert all(r["processes"] == 2 and r["pss_mb"] > 0 for r in written["memory"])  # the main process and one worker
    assert [s["format"] for s in written["speed"]] == ["json", "shards"]
    assert all(s["samples"] == 64 - 32 for s in written["speed"])  # one batch of 32 starts the worker, then the rest
