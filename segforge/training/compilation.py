"""``train.compile``: the training step's network compiled by ``torch.compile`` (TorchInductor) where it pays.

Inductor fuses what eager PyTorch runs as separate passes over memory (batch norm's statistics and
normalisation, ReLU, the additions of residual blocks, and their backward), which is where a training
step on the CPU loses most of its time to inference (``bench/README.md``: the profile and the compiled
step's speed). Compiling costs time once per input shape: about a minute for a ResNet-34 U-Net's
forward and backward on 2 CPU cores, less when TorchInductor's on-disk cache already holds the kernels.

``auto`` (the default) therefore decides after the first measured steps, where it can count the cost:
it compiles when one process trains (no torchrun), every batch has one shape (``data.crop_size``), the
machine has the C++ compiler Inductor generates code for, and at least ``AUTO_MIN_SECONDS`` of eager
training are left; then it times the compiled steps and keeps them only when they beat the eager ones
by ``AUTO_MIN_GAIN`` (on a 2-core CPU the gain depends on the architecture and its memory format, from
none to 1.2x: ``README.md``, Training speed). ``on`` compiles from the first step and keeps it, ``off``
never compiles. Validation, the report and saved
checkpoints always use the eager network: the compiled one shares its parameters and buffers.

A compilation that fails is never the end of a run: ``auto`` and ``on`` alike print why and go on
eager from the same batch.
"""

from __future__ import annotations

import shutil

import torch
from torch import nn

from segforge.config import Config
from segforge.training import distributed

AUTO_MIN_SECONDS = 600.0  # eager training left for `auto` to compile: a minute of compiling then pays back
AUTO_MIN_GAIN = 0.03  # auto keeps the compiled step when its measured steps are this much faster than eager


def compile_blocker(config: Config, process: distributed.Process) -> str | None:
    """Why ``train.compile: auto`` leaves this run eager, or ``None`` when it may compile."""
    if process.distributed:
        return "training runs in several processes (torchrun)"
    if not config.data.crop_size:
        return "training batches change shape (no data.crop_size): each new shape would compile again"
    if not has_cpp_compiler():
        return "no C++ compiler (g++, c++ or clang++) on PATH for TorchInductor"
    return None


def has_cpp_compiler() -> bool:
    """Whether a compiler TorchInductor looks for is on PATH (its ``cpp.cxx`` setting, else ``g++``)."""
    from torch._inductor import config as inductor

    names = inductor.cpp.cxx if isinstance(inductor.cpp.cxx, (list, tuple)) else (inductor.cpp.cxx,)
    return any(shutil.which(name) for name in names if name) or any(
        shutil.which(name) for name in ("g++", "c++", "clang++")
    )


def compile_network(model: nn.Module) -> nn.Module:
    """``model`` compiled for the training step (lazily: the work happens at its first call)."""
    return torch.compile(model)


def is_compile_error(err: BaseException) -> bool:
    """Whether ``err`` came from compiling (Dynamo's tracing or Inductor's code generation), not from the step."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError, CUDACompileError

    return isinstance(err, (TorchDynamoException, CppCompileError, CUDACompileError))


def compile_failure_note(err: BaseException) -> str:
    first_line = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return (
        f"torch.compile failed ({type(err).__name__}: {first_line[:300]}); training goes on eager from the "
        "same batch. Set train.compile: off (--compile off) to skip the attempt"
    )


class StepCompilation:
    """Which network a run's training step calls, the task's ``model``: eager, or compiled from some step on.

    ``switch`` swaps in the compiled network; its first step compiles (``first``: not a measure of speed)
    and may fail, after which ``fall_back`` restores the eager one.
    """

    def __init__(self, mode: str, blocker: str | None) -> None:
        self.mode, self.blocker = mode, blocker
        self.pending = mode == "auto" and blocker is None  # auto decides after the first measured steps
        self.eager: nn.Module | None = None
        self.first = False  # the next step is the compiled network's first: it compiles, and is not timed
        self.retime = False  # the next timed step is the first compiled one: the eager times are dropped
        self.eager_seconds: float | None = None  # auto's trial: the eager step time the compiled one must beat

    @classmethod
    def of(cls, config: Config, process: distributed.Process, task) -> StepCompilation:
        mode = config.train.compile
        if mode != "off" and not isinstance(getattr(task, "model", None), nn.Module):
            if mode == "on":
                raise ValueError(
                    "train.compile is 'on' but the task has no `model` network to compile: use auto or off"
                )
            return cls("off", None)
        return cls(mode, compile_blocker(config, process) if mode == "auto" else None)

    def resumes_compiled(self, compiled_before: bool) -> bool:
        """Whether to compile before the sitting's first step: ``on``, or ``auto`` in a run that had compiled
        (the same steps as had it not been interrupted)."""
        if self.mode == "on" or (compiled_before and self.pending):
            self.pending = False
            return True
        return False

    def pays(self, seconds_left: float) -> bool:
        """``auto``'s decision, once, from the eager training time left; switches when it pays."""
        self.pending = False
        return seconds_left >= AUTO_MIN_SECONDS

    def switch(self, task, *, trial_against: float | None = None) -> None:
        """Swaps in the compiled network; ``trial_against``: the eager seconds per step its first measured
        steps must beat (``auto``), or ``None`` to keep it whatever its speed."""
        self.eager, self.first = task.model, True
        self.eager_seconds = trial_against
        task.model = compile_network(task.model)

    @property
    def on_trial(self) -> bool:
        return self.eager_seconds is not None and self.eager is not None

    def keeps(self, task, compiled_seconds: float) -> bool:
        """``auto``'s verdict on the compiled step after its first measured steps: kept when it is faster than
        the eager one by more than ``AUTO_MIN_GAIN``; else the eager network comes back."""
        eager_seconds, self.eager_seconds = self.eager_seconds, None
        if compiled_seconds * (1 + AUTO_MIN_GAIN) < eager_seconds:
            return True
        task.model, self.eager = self.eager, None
        return False

    def fall_back(self, task, err: BaseException) -> str:
        task.model, self.eager, self.first = self.eager, None, False
        return compile_failure_note(err)
