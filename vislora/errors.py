"""Typed errors. Each message names the file or module, the key, and what to do about it."""

from __future__ import annotations


class VisloraError(Exception):
    """Base class of every error vislora raises on purpose."""


class AdapterFormatError(VisloraError):
    """The adapter file is unreadable, malformed or unsafe.

    `category` is a short machine-readable tag (e.g. "truncated", "non-finite", "pickle").
    """

    def __init__(self, message: str, *, path: object = None, category: str = "format") -> None:
        self.path = None if path is None else str(path)
        self.category = category
        prefix = f"{self.path}: " if self.path else ""
        super().__init__(f"{prefix}[{category}] {message}")


class UnsafeFormatError(AdapterFormatError):
    """The file is a pickle (or a zip of pickles): vislora never unpickles adapter files."""


class AdapterCompatError(VisloraError):
    """The adapter (or the requested targets) does not fit this model."""

    def __init__(self, message: str, *, path: object = None, category: str = "compat") -> None:
        self.path = None if path is None else str(path)
        self.category = category
        prefix = f"{self.path}: " if self.path else ""
        super().__init__(f"{prefix}[{category}] {message}")


class AdapterStateError(VisloraError, ValueError):
    """The requested operation does not fit the adapters' current state (unknown or duplicate name...)."""


class NonFiniteError(VisloraError):
    """A merge or a loaded tensor would put NaN or inf into the model."""


class FactorShapeError(AdapterFormatError, AdapterCompatError):
    """A file's factors disagree with each other (down [8, 32] with up [32, 7]): the file is malformed, and it
    fits no model, so it is both kinds of error (category "shape-mismatch")."""

    def __init__(self, message: str, *, path: object = None, category: str = "shape-mismatch") -> None:
        self.path = None if path is None else str(path)
        self.category = category
        prefix = f"{self.path}: " if self.path else ""
        VisloraError.__init__(self, f"{prefix}[{category}] {message}")
