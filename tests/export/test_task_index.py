"""vffn-eval's cache of lm-eval's task index (vffn_pretrain/evaluation/task_index.py): the same tasks as
lm-eval's own TaskManager, read once per lm-eval version, the user's --include-path always read afresh and
overriding, a damaged cache rebuilt."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from vffn_pretrain.evaluation import task_index


def test_cached_index_is_lm_evals_and_the_users_tasks_are_read_afresh(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager, manager
    from lm_eval.tasks._index import TaskIndex

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "piqa.yaml").write_text("task: piqa\ndataset_path: json\noutput_type: multiple_choice\n")
    first = task_index.task_manager([str(mine)])  # builds lm-eval's index and caches it
    (cached,) = (tmp_path / "cache" / "vffn-pretrain").glob("lm-eval-tasks-*.pkl")
    assert len(pickle.loads(cached.read_bytes())) > 1000
    assert first.task_index["piqa"].yaml_path == mine / "piqa.yaml"  # the user's overrides lm-eval's

    (mine / "my_task.yaml").write_text("task: my_task\ndataset_path: json\noutput_type: multiple_choice\n")
    defaults = str(Path(manager.__file__).parent)
    real_build = TaskIndex.build

    def build(paths, **kwargs):
        assert all(str(p) != defaults for p in paths), "lm-eval's own tasks were read again"
        return real_build(paths, **kwargs)

    monkeypatch.setattr(TaskIndex, "build", staticmethod(build))
    second = task_index.task_manager([str(mine)])
    assert "my_task" in second.all_tasks  # a task the user added since: read afresh
    monkeypatch.setattr(TaskIndex, "build", staticmethod(real_build))
    plain = TaskManager(include_path=[str(mine)])
    assert second.all_tasks == plain.all_tasks and second.all_groups == plain.all_groups
    assert {k: (e.kind, e.yaml_path) for k, e in second.task_index.items()} == \
        {k: (e.kind, e.yaml_path) for k, e in plain.task_index.items()}


@pytest.mark.parametrize("damage", [b"", b"not a pickle", pickle.dumps(["a", "list"])])
def test_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = []
    task_index._cached_index(tmp_path, lambda: built.append(1) or {"t": 1})
    (path,) = (tmp_path / "vffn-pretrain").glob("*.pkl")
    path.write_bytes(damage)
    assert task_index._cached_index(tmp_path, lambda: built.append(2) or {"t": 2}) == {"t": 2}
    assert built == [1, 2] and pickle.loads(path.read_bytes()) == {"t": 2}
    assert task_index._cached_index(tmp_path, lambda: built.append(3) or {"t": 3}) == {"t": 2}  # read, not built


def test_a_cache_that_cannot_be_written_costs_only_the_time(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file where the directory would go
    assert task_index._cached_index(tmp_path, lambda: {"t": 1}) == {"t": 1}
