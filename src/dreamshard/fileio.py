"""Small file helpers: atomic writes and JSON reading with clear errors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dreamshard.errors import InputError


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers never see a half-written file.

    The text goes to a temporary file in the same folder, which then replaces ``path``;
    on any error the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    if target.parent and not target.parent.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed file raises InputError naming it."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    try:
        return json.loads(source.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise InputError(f"{source}: line {err.lineno}: invalid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise InputError(f"{source}: not a UTF-8 text file") from None
