"""Integrity of the zip archives llpr reads as inputs: MACE model files (TorchScript or
``torch.save`` pickles) and llpr's own checkpoints.

libtorch does not check an archive's CRC-32s when it loads it (``torch.jit.load``,
``torch.load``), so a file damaged in a copy loads and gives wrong numbers; a model calibrated
from it would then be exported and sealed as if it were sound. :func:`verify_zip` checks the
CRC-32 of every record before such a file is read, and refuses a damaged one with the message
of a damaged exported file (``llpr._core.DamagedFileError``), adapted to who wrote the file.
"""

from __future__ import annotations

import os
import zipfile
import zlib

# a local file header: what every zip archive written by torch starts with
_ZIP_START = b"PK\x03\x04"
_CHUNK = 1 << 20


class DamagedInputError(ValueError):
    """An input file (MACE model, checkpoint) whose bytes are not the ones that were written."""


def damaged_message(path: str, why: str, writer: str, remedy: str) -> str:
    """The message of a damaged file: the same words as for a damaged exported file."""
    return (f"model file '{path}' is damaged ({why}): it is not the file that {writer} wrote. "
            f"Copy it again from where it was written, or {remedy}")


def is_zip(path: str) -> bool:
    """Whether ``path`` starts as a zip archive does (a truncated one too)."""
    with open(path, "rb") as f:
        return f.read(len(_ZIP_START)) == _ZIP_START


def verify_zip(path: str, writer: str, remedy: str) -> int:
    """Check the CRC-32 of every record of the zip archive at ``path``, reading each record
    once; return the number of records (0: the file is not a zip archive, nothing to check).

    ``writer`` (who wrote the file, e.g. "mace-torch") and ``remedy`` (how to write it
    again) complete the message of the :class:`DamagedInputError` that names the file and
    what is damaged in it."""
    path = os.fspath(path)
    if not is_zip(path):
        return 0
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        # it starts as a zip archive but its directory at the end is missing or corrupt
        raise DamagedInputError(damaged_message(
            path, f"its zip directory is unreadable: truncated or overwritten? ({exc})", writer, remedy)) from None
    with archive:
        records = archive.infolist()
        for info in records:
            try:
                with archive.open(info) as member:
                    while member.read(_CHUNK):
                        pass
            except zipfile.BadZipFile as exc:
                why = (f"record '{info.filename}' fails its CRC-32 check" if "CRC" in str(exc)
                       else f"record '{info.filename}' is corrupt ({exc})")
                raise DamagedInputError(damaged_message(path, why, writer, remedy)) from None
            except (zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
                raise DamagedInputError(damaged_message(
                    path, f"record '{info.filename}' cannot be read ({exc})", writer, remedy)) from None
    return len(records)
