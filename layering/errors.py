"""Exceptions raised by the layering store; all derive from :class:`LayeringError`."""

from __future__ import annotations

from dmioctl.errors import DMError


class LayeringError(DMError):
    """Base class of every layering error."""


class InvalidInput(LayeringError, ValueError):
    """A name, size, path or tarball given by the caller is not acceptable.

    Raised before anything on disk or in the kernel is changed.
    """
