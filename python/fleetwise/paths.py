"""Looking at a path a user gave (a scenario, a trace, an engine profile, an output directory)
without a traceback.

``Path.is_dir()``, ``is_file()`` and ``exists()`` answer False when nothing is there, but raise
``OSError`` for a name too long for the file system, a permission denied on a directory on the way
or (in ``resolve()``) a symlink loop. ``path_kind`` answers the same question and turns those into
an error naming the path (shortened when long) and the system's reason.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Literal

SHOWN_LIMIT = 400
"""A path or value longer than this many characters is shown in a message by its first
``SHOWN_HEAD`` and last ``SHOWN_TAIL`` characters around ``...`` and its length: an ordinary path,
however deep, is shown whole; a 100 KB ``--set`` value is not."""
SHOWN_HEAD = 200
"""Characters kept from the start of a shortened value (the directories of a path)."""
SHOWN_TAIL = 80
"""Characters kept from the end of a shortened value (a path's file name)."""

_ABSENT = (errno.ENOENT, errno.ENOTDIR)
"""``os.stat`` errors that mean nothing is there: no such entry, or a path through a regular file
(``/etc/hostname/x.yaml``)."""

PathKind = Literal["file", "dir", "other"]
"""What a path names: a regular file, a directory, or something else (a FIFO, device or socket)."""


def shortened(text: str) -> str:
    """``text`` whole up to ``SHOWN_LIMIT`` characters, else its first ``SHOWN_HEAD`` and last
    ``SHOWN_TAIL`` characters around ``...``, then its length: ``/data/.../run.yaml (612 characters)``.
    Every error message that echoes a user's path or value shortens it this way."""
    if len(text) <= SHOWN_LIMIT:
        return text
    return f"{text[:SHOWN_HEAD]}...{text[-SHOWN_TAIL:]} ({len(text):,} characters)"


def shown_path(path: str | Path) -> str:
    """``path`` as a message shows it (``shortened``)."""
    return shortened(str(path))


def path_error(path: str | Path, reason: str, what: str = "", error: type[Exception] | None = None) -> Exception:
    """The error (``error``, default ``ConfigError``) saying ``{what} {path}: {reason}``, the path
    shortened by ``shown_path``; ``what`` names the file's role or option (``--specs``, ``-o``)."""
    if error is None:
        from fleetwise.errors import ConfigError

        error = ConfigError
    return error(f"{what + ' ' if what else ''}{shown_path(path)}: {reason}")


def path_kind(path: str | Path, what: str = "", error: type[Exception] | None = None) -> PathKind | None:
    """What ``path`` names (links followed), or None when nothing is there (no such entry, or a
    path through a regular file). Any other failure to look (a name too long, permission denied,
    a symlink loop, a NUL character) raises ``path_error`` with the system's reason."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno in _ABSENT:
            return None
        raise path_error(path, e.strerror or str(e), what, error) from None
    except ValueError:  # an embedded NUL character
        raise path_error(path, "contains a NUL character; not a usable path", what, error) from None
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else "other"


def resolved(path: str | Path, what: str = "", error: type[Exception] | None = None) -> Path:
    """``Path(path).resolve()``; ``path_error`` naming it for a symlink loop (Python 3.11 raises
    ``RuntimeError``) or another failure to resolve it."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as e:
        reason = (e.strerror if isinstance(e, OSError) else None) or str(e)
        raise path_error(path, reason, what, error) from None
