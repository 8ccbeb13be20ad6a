"""One home for every error a user can act on.

Library code raises a subclass of :class:`MagicBokehError` for bad input (unreadable file, size mismatch, NaN,
empty mask, out-of-range parameter, missing weights). Entry points catch the base class, print its one-line
message and exit with status 2 (see :func:`magicbokeh.utils.cli.exit_on_user_error`).
"""

from __future__ import annotations


class MagicBokehError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class ImageReadError(MagicBokehError):
    """A file could not be read as an image or disparity map (missing, empty, corrupt, wrong kind)."""


class ImageWriteError(MagicBokehError):
    """An output could not be written (bad extension, unwritable folder, invalid tensor)."""


class InvalidInputError(MagicBokehError):
    """A tensor or value violates a contract: wrong shape, size mismatch, NaN/Inf, range."""


class ParameterError(MagicBokehError):
    """A parameter is out of its documented range (e.g. K outside [0, 32])."""


class EmptyMaskError(InvalidInputError):
    """A subject/focus mask selects no pixel."""


class MissingWeightsError(MagicBokehError):
    """A pretrained weights file or folder is missing; the message names it, the config key and the source."""


class DatasetError(MagicBokehError):
    """A dataset folder is malformed: missing pair, unexpected layout, empty split."""


class ConfigError(MagicBokehError):
    """A configuration value is inconsistent or missing."""


class TrainingDivergedError(MagicBokehError):
    """Training stopped: too many consecutive updates had a non-finite loss or gradient (lower the learning rate)."""


def plain_values(value: object, limit: int = 8) -> str:
    """A number, tensor or array written for a message: ``100``, ``0.25``, ``[16, 100]`` (never ``tensor([100.])``).

    More than ``limit`` values are cut with an ellipsis and the count.
    """
    tolist = getattr(value, "tolist", None)
    values = tolist() if callable(tolist) else value
    if isinstance(values, list | tuple):
        flat = list(_flatten(values))
        shown = ", ".join(_number(v) for v in flat[:limit])
        return f"[{shown}, … ({len(flat)} values)]" if len(flat) > limit else f"[{shown}]"
    return _number(values)


def _flatten(values):
    for item in values:
        if isinstance(item, list | tuple):
            yield from _flatten(item)
        else:
            yield item


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return repr(value)
    return f"{value:g}"


def missing_weights(path: str, config_key: str, source: str) -> MissingWeightsError:
    """Build the single, standard message for a missing pretrained file."""
    return MissingWeightsError(
        f"missing weights: '{path}' does not exist. Set the config key '{config_key}' to a local copy "
        f"(obtain it from {source}); weights are never downloaded at run time."
    )
