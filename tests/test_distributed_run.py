"""DistributedRunHook: under torchrun / accelerate launch only rank 0 writes
catalog outputs; the other ranks keep theirs in memory and read them back."""

import json

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node
from kedro.runner import SequentialRunner

from diffusion_transfer.project.distributed import DistributedRunHook, RankLocalDataset, process_ranks


def make() -> dict:
    return {"n": 1}


def double(d: dict) -> dict:
    return {"n": d["n"] * 2}


def add_one(d: dict) -> dict:
    return {"n": d["n"] + 1}


PIPELINE = Pipeline([
    node(make, None, "first", name="make"),
    node(double, "first", "second_out", name="double"),  # from a dataset factory
    node(add_one, "second_out", "third", name="add_one"),  # an in-memory intermediate
    node(double, "third", "fourth", name="double_again"),
])


def catalog(folder) -> DataCatalog:
    return DataCatalog.from_config({
        "first": {"type": "json.JSONDataset", "filepath": str(folder / "first.json")},
        "{name}_out": {"type": "json.JSONDataset", "filepath": str(folder / "{name}.json")},
        "fourth": {"type": "json.JSONDataset", "filepath": str(folder / "fourth.json")},
    })


def run(folder, monkeypatch, rank: int, world_size: int) -> DataCatalog:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    cat = catalog(folder)
    DistributedRunHook().before_pipeline_run(run_params={}, pipeline=PIPELINE, catalog=cat)
    SequentialRunner().run(PIPELINE, cat)
    return cat


def test_rank_1_writes_nothing_and_reads_its_own_results(tmp_path, monkeypatch):
    cat = run(tmp_path, monkeypatch, rank=1, world_size=2)
    assert list(tmp_path.iterdir()) == []  # nothing written, yet every node ran on the previous one's output
    assert cat.load("fourth") == {"n": 6}  # ((1 * 2) + 1) * 2
    assert isinstance(cat.get("second_out"), RankLocalDataset)  # the factory entry was wrapped too
    assert not isinstance(cat.get("third"), RankLocalDataset)  # memory stays memory


@pytest.mark.parametrize("rank, world_size", [(0, 2), (0, 1)])
def test_rank_0_and_ordinary_runs_write_every_output(tmp_path, monkeypatch, rank, world_size):
    cat = run(tmp_path, monkeypatch, rank, world_size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.json", "fourth.json", "second.json"]
    assert json.loads((tmp_path / "fourth.json").read_text()) == {"n": 6}
    assert not any(isinstance(cat.get(name), RankLocalDataset) for name in ("first", "second_out", "fourth"))


def test_rank_local_dataset_loads_an_earlier_runs_file_until_it_saves(tmp_path):
    (tmp_path / "x.json").write_text('{"n": 7}')
    catalog_ = DataCatalog.from_config({"x": {"type": "json.JSONDataset", "filepath": str(tmp_path / "x.json")}})
    local = RankLocalDataset(catalog_.get("x"))
    assert local.exists() and local.load() == {"n": 7}
    local.save({"n": 8})
    assert local.load() == {"n": 8} and json.loads((tmp_path / "x.json").read_text()) == {"n": 7}
    local.release()
    assert local.load() == {"n": 7}
    assert not RankLocalDataset(MemoryDataset()).exists()


def test_process_ranks_read_the_launcher_environment(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert process_ranks() == (0, 0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert process_ranks() == (3, 1, 4)
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        process_ranks()
