"""fileio: atomic writes with the umask's mode, one-line errors for unwritable paths and
hostile JSON, and write checks that leave nothing behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dreamshard.errors import InputError
from dreamshard.fileio import (
    atomic_write_text,
    check_writable,
    current_umask,
    parse_json,
    read_json,
    write_json,
)


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process's umask after a test that sets it."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_umask_mode(tmp_path: Path, mask: int, mode: int) -> None:
    os.umask(mask)
    assert current_umask() == mask
    write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_text(tmp_path / "b.csv", "x\n")
    for name in ("a.json", "b.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_write_under_a_regular_file_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "somefile.txt").write_text("keep\n")
    target = tmp_path / "somefile.txt" / "x.json"
    with pytest.raises(InputError) as caught:
        write_json(target, {})
    assert str(caught.value) == (
        f"{target}: cannot write here ({tmp_path / 'somefile.txt'} is not a folder)"
    )
    assert (tmp_path / "somefile.txt").read_text() == "keep\n"


def test_write_into_proc_names_the_path() -> None:
    with pytest.raises(InputError, match=r"^/proc/x\.json: cannot write \("):
        write_json("/proc/x.json", {})


def test_failed_replace_removes_the_temporary_file(tmp_path: Path) -> None:
    # The target is a non-empty folder: os.replace fails after the text was written.
    target = tmp_path / "out.json"
    target.mkdir()
    (target / "inside").write_text("")
    with pytest.raises(InputError, match=f"^{target}: cannot write"):
        write_json(target, {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_check_writable_leaves_nothing_behind(tmp_path: Path) -> None:
    check_writable(tmp_path / "a" / "b" / "out.json")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is not a folder"):
        check_writable(tmp_path / "file" / "out.json")
    with pytest.raises(InputError, match="is a folder"):
        check_writable(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match="Permission denied"):
            check_writable(folder / "out.json")
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("[" * 100_000, "nested too deeply"),
        ('{"a": ' * 100_000, "nested too deeply"),
        ("1" * 5000, "invalid JSON (Exceeds the limit"),
        ("", "line 1: invalid JSON"),
    ],
)
def test_hostile_json_is_one_line(tmp_path: Path, text: str, part: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        read_json(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and part in message and "\n" not in message


def test_parse_json_names_where() -> None:
    with pytest.raises(InputError, match=r"^profile x: invalid JSON \(nested too deeply\)$"):
        parse_json("[" * 100_000, "profile x")


def test_binary_file_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"\xff\xfe\x00\x80garbage")
    with pytest.raises(InputError, match="not a UTF-8 text file"):
        read_json(path)


def test_write_json_turns_other_values_with_default(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_json(target, {"out": tmp_path / "x"}, default=str)
    assert target.read_text() == f'{{\n  "out": "{tmp_path / "x"}"\n}}\n'
    with pytest.raises(TypeError):  # without it, a value JSON has no type for is refused
        write_json(target, {"out": tmp_path})
    assert target.read_text() == f'{{\n  "out": "{tmp_path / "x"}"\n}}\n'  # left as it was
