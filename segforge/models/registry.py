"""The model registry: every builder has the signature of ``segforge.create_model``."""

from __future__ import annotations

from segforge.registry import Registry

MODELS: Registry = Registry("model")


def check_encoder(model: str, encoder: str, allowed: tuple[str, ...]) -> None:
    """Rejects an encoder the architecture is not defined with, listing those it is."""
    if encoder not in allowed:
        raise ValueError(f"model {model!r} does not support encoder {encoder!r}; choose from {list(allowed)}")
