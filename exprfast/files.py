"""Writing files that other processes may read, or that a kill may interrupt: into a temporary
file beside the target, then renamed into place. Readers never see a partial file, and an
interrupted write leaves the previous file intact. A failed write raises ``WriteError`` naming
the target (never the temporary name) and the cause, e.g. "no space left on device"."""
from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import torch

TEMP_SUFFIX = ".tmp"
# ".<target name>.<pid>-<hex>.tmp" (temp_path), or ".<target name>.<pid>.tmp" of older versions.
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)(?:-[0-9a-f]+)?" + re.escape(TEMP_SUFFIX))
# What torch.save's C++ writer says when the disk fills up or the file system refuses a write:
# its RuntimeError carries no errno.
_STREAM_FAILURES = ("iostream error", "unexpected pos", "file write failed",
                    "PytorchStreamWriter failed", "open file failed")
_STRERROR = re.compile(r"strerror: (.+)")


class WriteError(OSError):
    """A file could not be written: the message names the file and the cause in one line."""

    def __init__(self, path: str | os.PathLike, cause: str, code: int | None = None,
                 what: str | None = None) -> None:
        super().__init__(f"{what} {path} is not writable: {cause}" if what
                         else f"cannot write {path}: {cause}")
        self.path, self.cause, self.errno, self.what = Path(path), cause, code, what

    def __reduce__(self):
        return type(self), (self.path, self.cause, self.errno, self.what)


def temp_path(path: str | os.PathLike) -> Path:
    """A temporary name beside ``path``, unique per process and call (so concurrent writers of
    one file never share one), hidden and ending in ``TEMP_SUFFIX``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def temp_files(folder: str | os.PathLike, target: re.Pattern) -> list[Path]:
    """The temporary files in ``folder`` (of ``temp_path`` or the older ``.<name>.<pid>.tmp``
    form) whose target name fully matches ``target``: the leftovers of killed writes."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if (m := _TEMP_NAME.fullmatch(p.name)) and target.fullmatch(m["target"]))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(temporary_path)``, then rename it to ``path`` (parents created). Raises
    ``WriteError`` naming ``path`` when the folder or the file cannot be written."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if isinstance(error, WriteError) or not _is_write_failure(error):
            raise
        raise WriteError(path, write_failure(error, path.parent, tmp, path),
                         getattr(error, "errno", None)) from error
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the folder was never created
            pass
    return path


def atomic_torch_save(payload, path: str | os.PathLike) -> Path:
    """``torch.save(payload)`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def check_writable(folder: str | os.PathLike, name: str = "folder") -> Path:
    """Create ``folder`` if needed and write (then remove) a file in it; otherwise
    ``WriteError`` "<name> <folder> is not writable: <cause>" (``name``: e.g. the flag)."""
    folder = Path(folder)
    probe = temp_path(folder / ".write-test")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"exprfast")
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        raise WriteError(folder, write_failure(error, folder, probe, folder), error.errno,
                         what=name) from error
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return folder


def write_failure(error: BaseException, folder: Path, *names: Path) -> str:
    """Why a write into ``folder`` failed, in words ("no space left on device", "read-only file
    system", ...): from the errno when there is one, else from the file system's state
    (torch.save's RuntimeErrors carry no errno). ``names``: (temporary, shown) name pairs to
    replace in a message that has no errno."""
    code = getattr(error, "errno", None)
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if code is None and (found := _STRERROR.search(message)):  # torch: "open file failed with
        return _lower_first(found[1].strip())                  # strerror: ..."
    if code is None:
        code = _file_system_errno(folder)
    if code is not None:
        return _lower_first(os.strerror(code))
    for temporary, shown in zip(names[::2], names[1::2]):
        message = message.replace(str(temporary), str(shown))
    return f"the write failed ({message})" if isinstance(error, RuntimeError) else message


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _is_write_failure(error: BaseException) -> bool:
    return isinstance(error, OSError) or any(s in str(error) for s in _STREAM_FAILURES)


def _file_system_errno(folder: Path) -> int | None:
    """ENOSPC when the file system of ``folder`` (or its nearest existing parent) is full,
    EROFS when it is mounted read-only, else None."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    if stats.f_flag & getattr(os, "ST_RDONLY", 1):
        return errno.EROFS
    full = stats.f_blocks and stats.f_bavail == 0  # pseudo file systems have no blocks at all
    if full or (stats.f_files and stats.f_favail == 0):
        return errno.ENOSPC
    return None
