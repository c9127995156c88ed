"""Files as every command writes them: atomic replacement, one writer per output directory, text read strictly.

- :func:`atomic_write`: readers see the old file or the new one, never a part; mode 0644 (under the umask).
- :func:`hold_directory`: an exclusive ``fcntl.flock`` on ``DIR/.offline-rl.lock`` for the life of the
  process (the kernel drops it when the process dies, however it dies). A second writer is refused
  naming the holder's pid; a directory that another command made, or that holds a finished result of another
  run (:class:`Finished`), is refused unless forced.
- :func:`read_text`: UTF-8 text, or one error naming the file and the line of the first bad byte.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LOCK_NAME = ".offline-rl.lock"


class BadInput(ValueError):
    """Bad input of any command: reported as one line on stderr, exit code 2."""


class OutputError(BadInput):
    """An output location that cannot be used: busy, made by something else, or not writable (exit code 2)."""


class TextError(BadInput):
    """A text file that cannot be read as UTF-8 text (exit code 2)."""


class DatasetError(BadInput):
    """The directory is not a readable offline dataset (bad input, exit code 2)."""


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()  # what open() would give: mkstemp alone makes 0600 files


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """``write(file)`` into a temporary file beside ``path``, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a full disk or quota, however a library wrapped it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def read_text(path: str | Path) -> str:
    """The file's text (a UTF-8 byte-order mark dropped); :class:`TextError` naming the file and line if it is
    unreadable or not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TextError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TextError(f"{path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x})") from None


@dataclass
class _Hold:
    directory: Path
    file: IO[str]
    created_directory: bool
    created_lock: bool
    previous: str = ""  # the lock file's text before this process held it
    lock_times: tuple = ()  # and its (atime, mtime)
    contents: dict = None  # the directory's other entries and their mtimes when it was held


_held: dict[Path, _Hold] = {}


@dataclass(frozen=True)
class Finished:
    """A command's finished result in its output directory, told apart from another run's by the settings that made
    it: the same run may be repeated or resumed into it; another run is refused unless forced.

    ``name`` names it in the refusal, filled from the saved settings (``"evaluation of {model}"``); ``mark`` is the
    file the command writes last (its presence: finished); ``settings`` are this run's; ``saved(directory)`` reads
    back those that made the result there. Only settings both record are compared (an older result may lack a newer
    one); paths are compared resolved."""

    name: str
    mark: str
    settings: dict
    saved: Callable[[Path], dict]

    def other_run(self, directory: Path) -> str | None:
        """What ``directory`` holds if it is another run's finished result (named, with the settings that differ);
        None if it holds none, or this run's own."""
        if not (directory / self.mark).is_file():
            return None
        try:
            saved = self.saved(directory)
        except (OSError, ValueError, LookupError, TypeError, AttributeError):  # damaged files
            saved = None
        if not isinstance(saved, dict) or not saved:
            return f"a finished {self.name.format_map(_Unknown())} whose settings cannot be read"
        differs = [f"{k} ({saved[k]!r}, now {v!r})" for k, v in self.settings.items()
                   if k in saved and _comparable(saved[k]) != _comparable(v)]
        if not differs:
            return None
        return (f"a finished {self.name.format_map(_Unknown(saved))} made with other settings: "
                + "; ".join(differs[:3]) + ("; ..." if len(differs) > 3 else ""))


class _Unknown(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def _comparable(value):
    """A setting as the files hold it (tuples as lists, paths as text), a path that exists (or comma-separated
    paths) resolved: ``runs/data`` and ``./runs/data`` are one dataset."""
    value = json.loads(json.dumps(value, default=str))
    if isinstance(value, str) and value:
        parts = value.split(",")
        try:
            if all(part and Path(part).expanduser().exists() for part in parts):
                return ",".join(str(Path(part).expanduser().resolve()) for part in parts)
        except (OSError, ValueError):  # a name too long, a NUL byte: text, not a path
            pass
    return value


def _holder(text: str) -> dict:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def hold_directory(directory: str | Path, command: str, force: bool = False,
                   owned: Callable[[Path], bool] = lambda directory: False, finished: Finished | None = None) -> Path:
    """Create ``directory`` if needed and hold it exclusively until this process exits.

    Refused with :class:`OutputError` (before anything is written into it):
    - another live process holds it (its command and pid are named);
    - it exists, holds files, and neither its lock file says ``command`` made it nor ``owned(directory)``
      recognises it (e.g. a dataset's manifest), unless ``force``;
    - it holds a finished result of another run (``finished``), unless ``force``;
    - it is a file, or cannot be created or written.
    """
    directory = Path(directory)
    key = directory.resolve()
    if key in _held:  # this process wrote there before (a stage of compare, a test): its result is checked alike
        _refuse_another_run(directory, finished, force)
        return directory
    existed = directory.exists()
    if existed and not directory.is_dir():
        raise OutputError(f"{directory} is a file, not a directory; choose another --out")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {directory}: {e.strerror or e}") from None
    lock = directory / LOCK_NAME
    lock_existed = lock.exists()
    try:
        file = open(lock, "a+")  # noqa: SIM115 -- held open for the life of the process
    except OSError as e:
        _undo(directory, existed, lock, lock_existed)
        raise OutputError(f"cannot write to {directory}: {e.strerror or e}") from None
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = _holder(file.read())
        file.close()
        raise OutputError(f"{directory} is being written by another process ({holder.get('command', '?')}, "
                          f"pid {holder.get('pid', '?')}); wait for it to end or choose another --out") from None
    file.seek(0)
    previous_text = file.read()
    previous = _holder(previous_text)
    lock_stat = lock.stat()
    others = [p for p in directory.iterdir() if p.name != LOCK_NAME]
    if others and previous.get("command") != command and not owned(directory) and not force:
        file.close()
        _undo(directory, existed, lock, lock_existed)
        raise OutputError(f"{directory} exists and was not made by {command}; choose another --out, or --force")
    try:
        _refuse_another_run(directory, finished, force)
    except OutputError:
        file.close()
        _undo(directory, existed, lock, lock_existed)
        raise
    try:
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"command": command, "pid": os.getpid(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        file.flush()
    except OSError as e:
        file.close()
        _undo(directory, existed, lock, lock_existed)
        raise OutputError(f"cannot write to {directory}: {e.strerror or e}") from None
    _held[key] = _Hold(directory, file, not existed, not lock_existed, previous_text,
                       (lock_stat.st_atime_ns, lock_stat.st_mtime_ns), _contents(directory))
    return directory


def _refuse_another_run(directory: Path, finished: Finished | None, force: bool) -> None:
    other = finished.other_run(directory) if finished is not None and not force else None
    if other is not None:
        raise OutputError(f"{directory} holds {other}; choose another --out, or --force to replace it")


def _undo(directory: Path, existed: bool, lock: Path, lock_existed: bool) -> None:
    """Leave a refused directory as it was found."""
    if not lock_existed:
        lock.unlink(missing_ok=True)
    if not existed:
        try:
            directory.rmdir()
        except OSError:
            pass


def _contents(directory: Path) -> dict[str, int]:
    try:
        return {p.name: p.stat().st_mtime_ns for p in directory.iterdir() if p.name != LOCK_NAME}
    except OSError:
        return {}


def held_directories() -> set[Path]:
    """The directories this process holds now (to release later only those a step of it took: a stage of compare)."""
    return set(_held)


def release(keep: set[Path]) -> None:
    """Release the directories held now that ``keep`` does not name, as a process's end would (the lock file stays,
    naming the command that wrote there)."""
    for key in set(_held) - keep:
        _held.pop(key).file.close()


def release_unused(keep: set[Path] = frozenset()) -> None:
    """After a failure: release every held directory (but those in ``keep``), taking back what holding it added
    (the lock file this process created, and the directory itself if it created it and nothing else was written
    there)."""
    for key, hold in list(_held.items()):
        if key in keep:
            continue
        hold.file.close()
        del _held[key]
        try:
            only_lock = [p.name for p in hold.directory.iterdir()] == [LOCK_NAME]
        except OSError:
            continue
        if hold.created_lock:
            (hold.directory / LOCK_NAME).unlink(missing_ok=True)
        elif _contents(hold.directory) == hold.contents:  # refused before writing: the lock as it was found
            _restore(hold.directory / LOCK_NAME, hold.previous, hold.lock_times)
        if hold.created_directory and only_lock:
            try:
                hold.directory.rmdir()
            except OSError:
                pass


def _restore(lock: Path, text: str, times: tuple) -> None:
    try:
        lock.write_text(text)
        os.utime(lock, ns=times)
    except OSError:
        pass
