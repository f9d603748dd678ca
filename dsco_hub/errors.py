"""The dsco-hub error hierarchy.

Every error a user can cause is a `DscoError`. Each subclass also inherits the built-in
error it refines, so callers that catch `ValueError` or `FileNotFoundError` keep working.
Messages are one line: the argument, the value, the rule and the fix. The CLI prints them
without a traceback and exits with code 1 (model: huggingface_hub `errors.py`).
"""

from __future__ import annotations


class DscoError(Exception):
    """Base class of every error dsco-hub raises on purpose.

    Args:
        message (`str`): one line naming the argument, the value, the rule and the fix.
        hint (`str`, *optional*): a second line the CLI prints after the message.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class ConfigError(DscoError, ValueError):
    """An option is out of range or inconsistent with another option."""


class SourceError(DscoError, ValueError):
    """A source dataset cannot be used: missing, no image or label column, unknown split."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The source dataset does not exist locally nor on the Hub."""


class SplitNotFoundError(SourceError):
    """The split asked for is not one of the source's splits.

    Args:
        message (`str`): one line naming the option, the split, the splits there are and the fix.
        split (`str`): the split asked for.
        available (`list[str]`): the source's splits, in the source's order.
    """

    def __init__(self, message: str, split: str, available: list[str]):
        super().__init__(message)
        self.split = split
        self.available = list(available)


class ImageDecodeError(SourceError):
    """An image of the source cannot be decoded (the message names the row)."""


class ModelError(DscoError, ValueError):
    """A diffusion model cannot be loaded or used (missing, not class-conditional, bad classes)."""


class OutputError(DscoError, FileExistsError):
    """The output folder exists and is not empty, or cannot be written."""


class HubError(DscoError, RuntimeError):
    """A Hub operation failed (authentication, repository, revision)."""
