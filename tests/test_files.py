"""Atomic writes: a failure mid-write leaves the old file or folder untouched and no temporary behind."""

import json
import os

import pytest

from helpers.files import atomic_directory, atomic_path, write_json_atomic


class Interrupted(RuntimeError):
    pass


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_json_atomic(tmp_path / "sub" / "a.json", {"epoch": 1})
    with pytest.raises(Interrupted), atomic_path(target) as temporary:
        temporary.write_text("{half")
        raise Interrupted
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    write_json_atomic(target, {"epoch": 2, "path": tmp_path})
    assert json.loads(target.read_text()) == {"epoch": 2, "path": str(tmp_path)}


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as building:
        (building / "old.txt").write_text("old")
    with pytest.raises(Interrupted), atomic_directory(target) as building:
        (building / "new.txt").write_text("new")
        raise Interrupted
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic_directory(target) as building:
        (building / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_a_directory_build_clears_killed_builds_and_may_keep_a_target_finished_meanwhile(tmp_path):
    target = tmp_path / "out"
    killed = tmp_path / ".out.building-999999999-abc"  # a process id that no process has
    killed.mkdir()
    (killed / "half.txt").write_text("half")
    other = tmp_path / ".other.building-999999999-abc"  # another target's build is not ours to remove
    other.mkdir()
    with atomic_directory(target) as building:
        assert building.name.startswith(f".out.building-{os.getpid()}-")
        (building / "first.txt").write_text("first")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.building-999999999-abc", "out"]

    asked = []

    def finished_meanwhile(path):
        asked.append(path)
        return True

    with atomic_directory(target, keep_target=finished_meanwhile) as building:
        (building / "second.txt").write_text("second")
    assert asked == [target] and [p.name for p in target.iterdir()] == ["first.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.building-999999999-abc", "out"]
