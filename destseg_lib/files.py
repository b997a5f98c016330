"""Writing files so that nothing half-written is ever left behind (a leaf: standard library only).

:func:`atomic_write` is the kit's one way to write an output: the bytes go to a temporary file next
to the target (``<name>.<random>.tmp``, mode ``0o666`` minus the umask), are fsync'ed, and the file is
renamed over the target.  Readers see the old file or the new one, never half of one; on any error
or interruption the temporary file is removed and the target is left as it was.

Every operating-system failure of a write — no space left (ENOSPC), read-only file system (EROFS),
permission denied (EACCES), a name too long (ENAMETOOLONG) — becomes an :class:`OutputError` whose
one-line message names the file and says what to do.  PyTorch reports a failed write of
``torch.save`` as a ``RuntimeError`` ("file write failed"): that is an :class:`OutputError` too.
"""
from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from .errors import OutputError

_REMEDY = {
    errno.ENOSPC: "no space left on the device: free some space or pass another --out",
    errno.EDQUOT: "disk quota exceeded: free some space or pass another --out",
    errno.EROFS: "the file system is read-only: pass another --out",
    errno.EACCES: "permission denied: pass an --out where you may write",
    errno.EPERM: "operation not permitted: pass an --out where you may write",
    errno.ENAMETOOLONG: "the file name is too long: use a shorter --out or shorter input names",
}


def output_error(path, e: BaseException) -> OutputError:
    """A one-line :class:`OutputError` for a failed write of ``path`` (``e``: the OSError, or
    torch's RuntimeError for a failed ``torch.save``)."""
    code = getattr(e, "errno", None)
    if code is None and " requested and " in str(e) and " written" in str(e):
        # numpy's tofile / np.save on a short write ("65536 requested and 62432 written"): a full disk
        what = "the disk is full (a short write: no space left on the device): free some space or pass another --out"
    elif code is None and isinstance(e, RuntimeError) and "write" in str(e).lower():
        # torch.save's stream writer drops the errno: the usual cause is a full disk
        what = "the write failed (usually: no space left on the device): free some space or pass another --out"
    else:
        what = _REMEDY.get(code) or (f"{getattr(e, 'strerror', None) or e}: check that the folder exists "
                                     "and that you may write there, or pass another --out")
    # (errno / filename are not set on the exception: OSError's str() would then replace the message)
    return OutputError(f"cannot write {path}: {what}")


def _open_temp(path: Path):
    """A new temporary file next to ``path`` (mode 0o666 minus the umask, like any new file)."""
    for _ in range(100):
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise output_error(path, e) from None
    raise OutputError(f"cannot create a temporary file next to {path}")


def atomic_write(path, write) -> Path:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync, then rename it over
    ``path`` (see the module docstring).  OS errors are :class:`OutputError` naming ``path``."""
    def write_named(tmp: Path, fd: int) -> None:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    return _atomic(path, write_named)


def atomic_write_file(path, write_to) -> Path:
    """:func:`atomic_write` for writers that take a file name (``onnx.save``, an exporter):
    ``write_to(tmp_path)`` writes the temporary file next to ``path``, which is then fsync'ed and
    renamed over ``path``; on any error the temporary file is removed."""
    def write_named(tmp: Path, fd: int) -> None:
        os.close(fd)
        write_to(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())

    return _atomic(path, write_named)


def _atomic(path, write_named) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path.parent, e) from None
    tmp, fd = _open_temp(path)
    try:
        write_named(tmp, fd)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OutputError):
            raise
        cause = _os_error_in_chain(e)
        if cause is not None:
            raise output_error(path, cause) from None
        if isinstance(e, RuntimeError) and ("write" in str(e).lower() or "inline_container" in str(e)):
            raise output_error(path, e) from None  # torch's stream writer, errno lost
        raise
    return path


def _os_error_in_chain(e: BaseException):
    """The OSError that ``e`` is or was raised while handling (torch.save's writer turns a full disk
    into a RuntimeError raised during the OSError's clean-up), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_csv(rows: list[dict], path, digits: int | None = None) -> Path:
    """The kit's one CSV writer: ``rows`` (dicts; the first row's keys are the columns) written
    atomically.  Undefined numbers (NaN, infinite) are empty cells, as CSV readers expect a missing
    value (pandas reads them back as NaN); ``digits`` rounds floats.  No rows: an empty file."""
    import csv
    import io
    import math

    buf = io.StringIO(newline="")
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else
                            round(v, digits) if isinstance(v, float) and digits is not None else v)
                        for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())
