"""The error a missing model file raises, in a module of its own.

The model modules (:mod:`engines.models.faceapi`...) raise it and the registry
(:mod:`engines.models.registry`, which lists those modules' models) raises and re-exports it;
defined in either, the two would import each other.
"""

from __future__ import annotations


class WeightsNotFound(FileNotFoundError):
    """A model's weights are not on this machine; the message says where to put them."""


__all__ = ["WeightsNotFound"]
