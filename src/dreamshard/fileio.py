"""Small file helpers: atomic writes, write checks and JSON reading with clear errors.

Every failure a user can cause (a folder that cannot be written, a file that is not
UTF-8 or not JSON, JSON nested too deeply to parse) raises :class:`InputError` with one
line naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dreamshard.errors import InputError

#: Mode bits of a new file before the umask (what ``open`` gives a new file).
_NEW_FILE_MODE = 0o666


def _reason(err: OSError) -> str:
    """The human part of an OSError, without the file name (the caller names it)."""
    return err.strerror or type(err).__name__


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status``; elsewhere it is read by setting and
    restoring it (``os.umask`` has no read-only form), which is brief but not atomic.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _missing_parents(folder: Path) -> list[Path]:
    """The folders above ``folder`` (itself included) that do not exist, deepest first."""
    missing = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def _make_parents(target: Path) -> None:
    """Create the folders above ``target``; a file in the way is named in the error."""
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{target}: cannot write here ({existing} is not a folder)")
    target.parent.mkdir(parents=True, exist_ok=True)


def check_writable(path: str | Path) -> None:
    """Raise InputError naming ``path`` unless a file can be written there.

    Creates the missing folders and a temporary file beside ``path`` the way
    :func:`atomic_write_text` will, then removes both, so a command can refuse an
    unwritable output before it spends minutes of work whose results would be lost.
    ``path`` itself is not touched.
    """
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target}: is a folder, expected a file path")
    created = _missing_parents(target.parent)
    try:
        _make_parents(target)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.unlink(tmp_name)
    except OSError as err:
        raise InputError(f"{target}: cannot write here ({_reason(err)})") from None
    finally:
        # Leave no empty folders behind: the real write creates them again.
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers never see a half-written file.

    The text goes to a temporary file in the same folder, which then replaces ``path``;
    on any error the temporary file is removed and ``path`` is left as it was. The file
    gets the mode any new file gets under the process's umask (0644 under umask 022),
    not the private 0600 of a temporary file.

    Raises:
        InputError: the folder or the file cannot be written (naming ``path``).
    """
    target = Path(path)
    tmp_name: str | None = None
    try:
        _make_parents(target)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), _NEW_FILE_MODE & ~current_umask())
        os.replace(tmp_name, target)
    except OSError as err:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        raise InputError(f"{target}: cannot write ({_reason(err)})") from None
    except BaseException:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``payload`` as indented JSON, atomically (errors as :func:`atomic_write_text`);
    ``default`` turns values JSON has no type for into ones it has (``json.dumps``)."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=default) + "\n")


def parse_json(text: str, where: str) -> Any:
    """Parse JSON text; malformed text raises InputError naming ``where``.

    Besides syntax errors this catches what ``json.loads`` raises on hostile input:
    nesting too deep for the parser (RecursionError) and integers too long to convert
    (ValueError).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: line {err.lineno}: invalid JSON ({err.msg})") from None
    except RecursionError:
        raise InputError(f"{where}: invalid JSON (nested too deeply)") from None
    except ValueError as err:
        raise InputError(f"{where}: invalid JSON ({err})") from None


def read_text(path: str | Path, encoding: str = "utf-8-sig") -> str:
    """A text file's content; a missing, unreadable or non-UTF-8 file raises InputError.

    The default encoding drops the byte-order mark that spreadsheets write.
    """
    source = Path(path)
    if source.is_dir():
        raise InputError(f"{source}: is a folder, expected a file")
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    try:
        return source.read_text(encoding=encoding)
    except UnicodeDecodeError:
        raise InputError(f"{source}: not a UTF-8 text file") from None
    except OSError as err:
        raise InputError(f"{source}: cannot read ({_reason(err)})") from None


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed file raises InputError naming it."""
    return parse_json(read_text(path), str(Path(path)))
