"""Training and evaluation: ``fit(config)`` and ``evaluate(model, loader, ...)``."""

from segforge.training.evaluate import Evaluation, evaluate, write_report
from segforge.training.loop import TrainingError, fit

__all__ = ["Evaluation", "TrainingError", "evaluate", "fit", "write_report"]
