"""Device-name mangling as libdevmapper does it, for the ``dmioctl`` command only.

The kernel takes any byte but NUL and ``/`` in a device-mapper name; udev does
not, so libdevmapper (libdm/libdm-common.c, the ``--manglename`` of dmsetup)
stores in the kernel a *mangled* name: each byte outside the udev whitelist
``0-9 A-Z a-z # + - . : = @ _`` is written ``\\xNN``, lower-case hex.
``dmsetup create "a b"`` makes the kernel name ``a\\x20b``, and dmsetup shows
that device as ``a b`` again.  A name is mangled on its way in (device NAME,
create's name, rename's NEW) and unmangled on its way out (every name printed);
uuids (``-u``, create's ``-u``, rename's ``--setuuid``) likewise.

The three modes of libdm's ``dm_string_mangling_t``:

``auto`` (DM_STRING_MANGLING_AUTO, libdevmapper's default)
    In: a name that already holds a ``\\xNN`` sequence is taken as mangled and
    goes as it is; otherwise each byte off the whitelist is mangled.  Mixing
    the two (``a\\x20b c``), a ``\\x`` with fewer than two characters after it,
    and a name mangled twice (holding ``\\x5cx``) are errors.  Out: unmangled.
``hex`` (DM_STRING_MANGLING_HEX)
    In: every byte off the whitelist is mangled, a backslash too, so ``a\\x20b``
    becomes ``a\\x5cx20b``.  Out: unmangled.
``none`` (DM_STRING_MANGLING_NONE)
    Names go in and come out byte for byte.

Unmangling (libdm's ``unmangle_string`` in its strict form, which auto and hex
use) turns each ``\\x`` and two hex digits back into the byte.  A kernel name
that cannot be the result of mangling, one with a byte off the whitelist
other than a backslash (``n m``, made in mode none), or in auto mode one
mangled twice, is left as the kernel has it.  libdevmapper fails the whole
command there instead (a listing included); this shows such a name raw.

Names are :class:`str` whose bytes are the kernel's (UTF-8, surrogate escapes
for the rest; see :func:`dmioctl.uapi.dm.kernel_bytes`): mangling works on those
bytes, so ``ü`` is ``\\xc3\\xbc`` as in dmsetup.

Example::

    >>> mangle("a b", Mangling.AUTO)
    'a\\\\x20b'
    >>> unmangle("a\\\\x20b", Mangling.AUTO)
    'a b'
"""

from __future__ import annotations

import enum
import re

from dmioctl.errors import InvalidArgument
from dmioctl.uapi.dm import kernel_bytes, kernel_text

__all__ = ["MANGLING_ENV", "Mangling", "default_mangling", "mangle", "unmangle"]

#: The environment variable libdevmapper's dm_lib_init reads the default mode from.
MANGLING_ENV = "DM_DEFAULT_NAME_MANGLING_MODE"


class Mangling(enum.Enum):
    """A name mangling mode, as dmsetup's ``--manglename`` spells it."""

    NONE = "none"
    AUTO = "auto"
    HEX = "hex"


#: The bytes a mangled name keeps as they are (libdm-common.c _is_whitelisted_char).
WHITELIST = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#+-.:=@_")

_BACKSLASH_X = b"\\x"
#: What auto mode takes for a name mangled twice: an escaped backslash before an x.
_TWICE = b"\\x5cx"
_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")


def default_mangling(environ: dict[str, str] | None = None) -> Mangling:
    """The mode of $DM_DEFAULT_NAME_MANGLING_MODE (any case), else auto.

    An unknown value is ignored, as libdevmapper's dm_lib_init ignores it.
    """
    value = (environ or {}).get(MANGLING_ENV, "").lower()
    try:
        return Mangling(value)
    except ValueError:
        return Mangling.AUTO


def _escaped(byte: int) -> bytes:
    return b"\\x%02x" % byte


def mangle(name: str, mode: Mangling, what: str = "name") -> str:
    """The kernel's form of ``name`` in ``mode``, as libdm's dm_task_set_name makes it.

    ``what`` names the string in errors ("name", "new name").

    Raises:
        InvalidArgument: in auto mode, a name that mixes mangled and unmangled
            parts, ends in a cut ``\\x`` sequence, or is mangled twice.
    """
    if mode is Mangling.NONE:
        return name
    data = kernel_bytes(name)
    if mode is Mangling.AUTO and _TWICE in data:
        raise InvalidArgument(
            f"the {what} {name!r} seems to be mangled more than once, which auto mode refuses"
        )
    out = bytearray()
    # As libdm's need_mangling: None until the name shows whether it is mangled.
    mangled: bool | None = None
    i = 0
    while i < len(data):
        if mode is Mangling.AUTO and data.startswith(_BACKSLASH_X, i):
            # An already mangled sequence is kept, whatever its two characters.
            if len(data) - i < 4 or mangled is True:
                raise _mixed(what, name)
            out += data[i : i + 4]
            mangled = False
            i += 4
            continue
        byte = data[i]
        if byte in WHITELIST:
            out.append(byte)
        else:
            if mode is Mangling.AUTO and mangled is False:
                raise _mixed(what, name)
            out += _escaped(byte)
            mangled = True
        i += 1
    return out.decode("ascii")


def _mixed(what: str, name: str) -> InvalidArgument:
    return InvalidArgument(
        f"the {what} {name!r} mixes mangled and unmangled characters, or is mangled"
        " improperly (auto mode; --manglename hex mangles it whole)"
    )


def unmangle(name: str, mode: Mangling) -> str:
    """``name`` from the kernel as a person reads it in ``mode`` (libdm's unmangle_string).

    In modes auto and hex each ``\\xNN`` becomes its byte; a name that cannot
    come from mangling (see the module) is returned as it is.  Mode none returns
    every name as it is.
    """
    if mode is Mangling.NONE:
        return name
    data = kernel_bytes(name)
    if mode is Mangling.AUTO and _TWICE in data:
        return name
    if any(byte not in WHITELIST and byte != ord("\\") for byte in data):
        return name
    return kernel_text(_ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), data))
