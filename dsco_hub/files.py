"""The file system, safely: which output folders may be written or replaced, atomic writes, one-line errors.

Nothing a user had is deleted or changed: an output folder is never the current folder (or one above it), the
home folder, the root, nor a folder that holds the source or lies inside it (`check_out_path`); only a folder
dsco-hub wrote may be replaced (`writer.check_output`). Files are written to a temporary name and renamed into
place (`atomic_path`, `atomic_write`), so a crash or a full disk leaves either the old file or the new one, never
half of one.
An `OSError` becomes an `OutputError` of one line that names the path, the reason and the fix (`os_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from dsco_hub.errors import DscoError, OutputError

_FIXES = {
    errno.EROFS: "the file system is read-only; choose a writable --out",
    errno.EACCES: "permission denied; choose a folder you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write to, or fix its permissions",
    errno.ENOSPC: "the disk is full; free some space or choose --out on another disk, then rerun to resume",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose --out elsewhere, then rerun to resume",
    errno.ENOTDIR: "a component of the path is a file, not a folder; choose another --out",
    errno.EISDIR: "the path is a folder where a file was expected; choose another --out",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter --out",
    errno.EEXIST: "something is already there; choose another --out",
}


def os_error(err: OSError, option: str = "--out") -> OutputError:
    """An `OutputError` of one line for a failed file-system call: the path, the reason (errno name) and the fix.

    Args:
        err (`OSError`): the error, with its `filename` when the call set one.
        option (`str`, *optional*, defaults to "--out"): the option whose value led to the path, named in the fix.

    Returns:
        `OutputError`: e.g. "cannot write /mnt/ro/set: Read-only file system (EROFS); the file system is read-only;
        choose a writable --out."
    """
    name = errno.errorcode.get(err.errno, "") if err.errno is not None else ""
    reason = err.strerror or str(err)
    fix = _FIXES.get(err.errno, "check the path and its permissions") if err.errno is not None else ""
    fix = fix.replace("--out", option)
    where = f" {err.filename}" if err.filename else ""
    return OutputError(f"cannot write{where}: {reason}{f' ({name})' if name else ''}; {fix}.")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_file_modes(folder: str | Path, pattern: str = "*.safetensors") -> None:
    """Give the files matching `pattern` under `folder` (recursively) the mode `open()` gives a new file: 0666 less
    the umask.

    `safetensors` 0.8 writes through a temporary file of mode 0600 and renames it (safetensors issue #782), so a
    model folder saved by `diffusers`' `save_pretrained` holds weights that only their owner can read, beside a
    `config.json` everyone can; a prior shared on a cluster or copied into a container then fails to load.

    Raises:
        OSError: a file cannot be changed (not its owner's); the callers made every file it visits.
    """
    mode = 0o666 & ~_umask()
    for path in Path(folder).rglob(pattern):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def make_dirs(path: str | Path, option: str = "--out") -> Path:
    """Create `path` and its parents (mode 0777 less the umask, as `mkdir -p`).

    Raises:
        OutputError: the folder cannot be made (read-only file system, a file in the way, no permission, full disk).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{option}: {path} exists and is a file; pass a folder path.") from None
    except OSError as err:
        raise os_error(err, option) from err
    return path


def temp_dir_beside(path: str | Path, option: str = "--out") -> Path:
    """A fresh, empty folder next to `path` (same file system, so a rename moves it into place).

    Unlike `tempfile.mkdtemp` (mode 0700), the folder gets the mode a plain `mkdir` would (0777 less the umask), so
    the set it becomes is readable as the user's other folders are.

    Raises:
        OutputError: the parent folder cannot be made or written.
    """
    path = Path(path).absolute()
    make_dirs(path.parent, option)
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        folder.chmod(0o777 & ~_umask())
    except OSError as err:
        raise os_error(err, option) from err
    return folder


@contextlib.contextmanager
def atomic_path(path: str | Path, option: str = "--out") -> Iterator[Path]:
    """A temporary path beside `path` to write a file or a folder at, renamed onto `path` when the block succeeds.

    The one temp-and-rename of the package: `atomic_write` uses it, and so does whatever writes through a library
    that wants a path (parquet shards, `save_to_disk` folders). The temporary name is `.{name}.{pid}.tmp` in the
    same folder (same file system: the rename is atomic), so readers see the old `path` or the new one, never half.
    When the block raises, or the rename fails, the temporary file or folder is removed and `path` is left as it
    was. A folder replaces only a missing or empty folder (`os.replace`). Keep reading (from a network, a stream)
    out of the block: an `OSError` there would be reported as a write error.

    Args:
        path (`str` or `Path`): the final path; its folder must exist.
        option (`str`, *optional*, defaults to "--out"): the option whose value led to the path, named in an error.

    Yields:
        `Path`: the temporary path (nothing is there yet).

    Raises:
        OutputError: the block or the rename failed with an `OSError` (one line: the path, the reason, the fix);
            any other error of the block (a `DscoError` among them) propagates as it is.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove(tmp)  # left by a killed process that had this pid
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, OSError) and not isinstance(err, DscoError):  # ours are already one line
            if err.filename in (str(tmp), tmp):  # the user named `path`, never the temporary name
                err.filename = str(path)
            raise os_error(err, option) from err
        raise


def _remove(path: Path) -> None:
    """Remove a file or a folder tree if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str, option: str = "--out") -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename (readers never see half).

    Text is written as UTF-8. The temporary file is removed when the write fails (a full disk leaves the old file,
    or none); see `atomic_path`.

    Raises:
        OutputError: the file cannot be written (the message names the path, the reason and the fix).
    """
    path = Path(path)
    with atomic_path(path, option) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


def _related(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are the same folder or one lies inside the other."""
    return a == b or a in b.parents or b in a.parents


def check_out_path(value: str | None, option: str = "--out", sources: Iterable[str | Path | None] = ()) -> Path:
    """Refuse an output folder whose writing or replacement could touch what the user has.

    Refused: an empty or blank value, `.`, `..`, the root, the home folder, the current folder or any folder above
    it, and any folder that holds a source, is a source or lies inside one (writing there would change the
    source). Symlinks are resolved first, so `--out link-to-home` is the home folder.

    Args:
        value (`str`): the option's value as given.
        option (`str`, *optional*, defaults to "--out"): the option's name, for the message.
        sources (iterable of `str` or `Path`): local source folders of the run (Hub ids and None are ignored).

    Returns:
        `Path`: the folder, resolved to an absolute path.

    Raises:
        OutputError: one line naming the option, the value, the rule and the fix.
    """
    fix = f"pass a new or dsco-hub-written folder, e.g. {option} ./my-set"
    if value is None or not str(value).strip():
        raise OutputError(f"{option}={value!r} is empty; {fix}.")
    if str(value).strip() in (".", "..") or str(value).strip().rstrip("/") in ("", "~"):
        raise OutputError(f"{option}={value!r} is the current, parent, root or home folder; {fix}.")
    path = Path(value).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if path == Path(path.anchor) or path == Path.home().resolve():
        raise OutputError(f"{option}={value!r} is the root or home folder; {fix}.")
    if path == cwd or path in cwd.parents:
        raise OutputError(f"{option}={value!r} is the current folder or holds it; {fix}.")
    for source in sources:
        if source is None or not Path(str(source)).expanduser().exists():
            continue  # a Hub id: nothing local to protect
        held = Path(str(source)).expanduser().resolve()
        if _related(path, held):
            raise OutputError(f"{option}={value!r} is, holds or lies inside the source {source}; {fix}.")
    return path


def check_file_path(value: str, option: str) -> Path:
    """Refuse, before any work, a file path that cannot be written: an existing folder, or a path whose folder is
    missing or is a file (the work would be done, then lost at the write).

    Args:
        value (`str`): the option's value as given (`~` is expanded).
        option (`str`): the option's name, for the message (e.g. "--json").

    Returns:
        `Path`: the path, `~` expanded.

    Raises:
        OutputError: one line naming the option, the value, the problem and the fix.
    """
    path = Path(value).expanduser()
    if path.is_dir():
        raise OutputError(f"{option}={value!r} is a folder; pass a file path, e.g. {option} {path / 'results.json'}.")
    if not path.parent.is_dir():
        what = "is a file" if path.parent.exists() else "does not exist"
        raise OutputError(f"{option}={value!r}: its folder {path.parent} {what}; create it or pass another path.")
    return path


# Paths as a set records them: never an absolute path (a push publishes the card and dsco_config.json)


def local_name(path: str | Path) -> str:
    """A local folder's (or file's) name, as a card records it: its absolute path would publish the user's folders.

    Returns:
        `str`: the last component of `path` once `~` is expanded and symlinks resolved.
    """
    return Path(path).expanduser().resolve().name


def shown_name(source_id: str) -> str:
    """A source as a card shows it: a local folder by its name (`local_name`), a Hub id as it is."""
    return local_name(source_id) if Path(source_id).expanduser().exists() else source_id


def relative_to(path: str | Path, folder: str | Path) -> str:
    """`path` relative to `folder` (the set's folder), in POSIX form; `evaluate` resolves it against that folder.

    Returns:
        `str`: e.g. `../data/source` (`os.path.relpath` of both resolved paths, so it may climb out of `folder`).
    """
    return Path(os.path.relpath(Path(path).expanduser().resolve(), Path(folder).resolve())).as_posix()
