import json

import datasets
import pytest

from rollout.dataset import COLUMNS, DatasetWriter, load_offline_dataset, read_manifest
from tests.conftest import make_rows


def test_offline_dataset_round_trips_through_load_dataset(tmp_path):
    writer = DatasetWriter(tmp_path, {"model": "m", "complete": False})
    rows = make_rows(n_prompts=3, n=2)
    writer.write_shard(rows[:4])
    writer.write_shard(rows[4:])
    writer.finish(wall_seconds=1.0)

    files = sorted(str(p) for p in (tmp_path / "data").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.column_names == COLUMNS
    assert len(ds) == len(rows)
    for got, want in zip(ds, rows, strict=True):
        for column in COLUMNS:
            assert got[column] == pytest.approx(want.get(column, "sample")), column  # rows without origin: samples

    manifest = read_manifest(tmp_path)
    assert manifest["counts"] == {"prompts": 3, "responses": 6, "accepted": 3, "scoring_timeouts": 0}
    assert manifest["pass_rate"] == 0.5 and manifest["complete"] is True
    assert len(load_offline_dataset(tmp_path)) == 6
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries behind
    assert json.loads((tmp_path / "manifest.json").read_text())["shards"] == ["shard-00000.parquet", "shard-00001.parquet"]
