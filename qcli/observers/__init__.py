"""Range observers: streaming statistics over activations, one file per method, in a registry."""

from . import minmax  # noqa: F401  (registers "minmax")
from .base import OBSERVERS, Observer, TensorStats

__all__ = ["OBSERVERS", "Observer", "TensorStats", "minmax"]
