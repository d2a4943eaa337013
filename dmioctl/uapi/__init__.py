"""Binary layouts and constants of the kernel's user-space API."""

from __future__ import annotations

import enum


def flag_words(flags: enum.IntFlag, prefix: str, suffix: str = "") -> str:
    """The set members of ``flags`` as ``READ_ONLY|AUTOCLEAR`` for log lines; ``-`` if none.

    Each member's kernel name loses ``prefix`` and ``suffix`` (``DM_``/``_FLAG``).
    """
    names = [
        flag.name.removeprefix(prefix).removesuffix(suffix)
        for flag in type(flags)
        if flag & flags and flag.name is not None
    ]
    return "|".join(names) or "-"
