"""``segforge.training.fit``: the training loop, read top to bottom.

A new run first prepares (``segforge.training.prepare``): layout, splits, the data checked and
fingerprinted, and the recipe for whatever the config leaves open. Then it trains in **optimizer
steps**, whatever unit the user chose: ``train.epochs`` (steps per epoch x epochs),
``train.iterations``, or ``train.time_budget`` (the steps that fit, measured and refitted as the
run goes; ``segforge.training.budget``). Every ``eval_steps`` steps a *round* ends: the model is
validated, a row is added to ``metrics.csv`` and ``curves.png``, and the checkpoints are saved.

A run folder holds ``config.yaml`` (resolved), ``splits/`` (a hold-out's lists), ``metrics.csv``,
``curves.png``, ``last.safetensors`` and ``best.safetensors`` (weights + model config + classes,
palette, normalisation, label map), ``state.pt`` (everything ``--resume`` needs), and at the end the
validation report of the best checkpoint (``report.json``, ``confusion.png``, ``overlays/``).

Every file is written atomically (temp file + rename). The resume state is saved at every round's
end, every ``train.checkpoint_minutes`` within a round, and when Ctrl-C or SIGTERM asks the run to
stop; so a run killed at any moment (even by SIGKILL) loses at most the work since the last save,
and ``--resume`` continues it exactly: batch order and augmentation are drawn from seeds of
(seed, epoch) and (seed, epoch, sample), so they do not depend on where a run was resumed.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from segforge.checkpoint import load_state, save_checkpoint, save_state
from segforge.config import Config, config_from_dict, parse_duration
from segforge.data import SegmentationDataset, build_transforms, create_dataset
from segforge.data.io import MAX_IMAGE_ENV
from segforge.errors import user_message
from segforge.files import atomic_write, check_output_folder
from segforge.inference.probabilities import NonFiniteOutput
from segforge.labels import NO_LABEL
from segforge.plots import plot_curves
from segforge.runtime import stop_opencv_threads
from segforge.training import distributed, recipe
from segforge.training.adversarial import AdversarialTask
from segforge.training.budget import Clock, describe_seconds, fit_steps
from segforge.training.compilation import StepCompilation, is_compile_error
from segforge.training.distributed import StreamBatchSampler
from segforge.training.instance_task import InstanceTask
from segforge.training.optim import create_optimizer, create_scheduler
from segforge.training.prepare import dataset_options, prepare
from segforge.training.series_task import SeriesSegmentationTask
from segforge.training.task import RoundMetrics, SegmentationTask, Task

MEASURED_STEPS = 5  # steps timed (after a first, warm-up one) before a time budget is first fitted


class TrainingError(RuntimeError):
    """A run that cannot go on (a NaN loss); the message says where and what to try."""


@dataclass
class Datasets:
    train: SegmentationDataset
    val: SegmentationDataset | None
    num_classes: int
    ignore_index: int
    in_channels: int


@dataclass
class Progress:
    """Where a run stands; saved in the resume state.

    ``step`` counts optimizer steps, ``batches`` global batches (``accumulate`` per step); a round
    ends at step ``last_eval + eval_steps``. ``seconds`` is the run's clock at the last save;
    ``step_seconds``/``timed_steps`` and ``round_seconds`` are what a time budget is fitted with.
    """

    total_steps: int
    eval_steps: int
    warmup_steps: int
    steps_per_epoch: int
    step: int = 0
    batches: int = 0
    last_eval: int = 0
    best_iou: float = -1.0
    stale: int = 0
    seconds: float = 0.0
    step_seconds: float = 0.0
    timed_steps: int = 0
    round_seconds: float = 0.0  # one validation, row and save, as last measured
    fitted: bool = False  # the total has been fitted to the time budget
    decay_step: int = 0  # the step since which the decay runs over (decay_done, 1] of its course
    decay_done: float = 0.0
    compiled: bool = False  # train.compile: auto compiled the step; a resumed sitting compiles from its first

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    def decayed(self, step: int) -> float:
        """The share of its decay (0 to 1) the learning-rate schedule has run at ``step``."""
        left = (step - self.decay_step) / max(self.total_steps - self.decay_step, 1)
        return min(1.0, self.decay_done + (1.0 - self.decay_done) * max(left, 0.0))

    def refit(self, total_steps: int) -> None:
        """Sets a new total, the decay going on from where it is now over the steps left: the learning
        rate never jumps when a time budget's refit finds more, or fewer, steps than first planned."""
        if total_steps != self.total_steps:
            self.decay_step, self.decay_done = self.step, self.decayed(self.step)
            self.total_steps = total_steps


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # torch gives each worker 1 thread; OpenCV would otherwise oversubscribe the cores
    # Ctrl-C, and a SIGTERM sent to the whole process group (kill -- -PID, a job scheduler's stop), are the main
    # process's: it saves, then stops the workers. A worker that died of them would take the save down with it,
    # so workers leave the group (the data loader still stops them directly, and they exit if the main one dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setpgid(0, 0)


def build_datasets(config: Config) -> Datasets:
    """The train and val datasets of a resolved config (normalised; the train augmentation is ``fit``'s)."""
    data = config.data
    if not data.root:
        raise ValueError("data.root is not set: pass --data PATH (a dataset folder) or set data.root in the config")
    options = dataset_options(config) | {"mean": data.mean, "std": data.std}
    train = create_dataset(data.format, data.root, data.train_split, **options)
    val = create_dataset(data.format, data.root, data.val_split, **options) if data.val_split else None
    num_classes = train.num_classes or data.num_classes
    if not num_classes or num_classes < 2:
        raise ValueError(
            f"the dataset at {data.root} does not say how many classes it has: pass --num-classes N "
            "(2 or more; a binary task has 2)"
        )
    if data.temporal_dropout:
        if train.inputs != "series":
            raise ValueError(
                f"data.temporal_dropout leaves dates out of time series; the data at {data.root} are images: drop it"
            )
        train.temporal_dropout = data.temporal_dropout
    ignore_index = train.ignore_index if train.ignore_index is not None else NO_LABEL
    in_channels = train[0][0].shape[-3]  # (C, H, W) images; (T, C, H, W) time series
    return Datasets(train, val, num_classes, ignore_index, in_channels)


def augment_seed(seed: int, epoch: int) -> int:
    """The seed from which each sample's augmentation in ``epoch`` is drawn (with the sample's index)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochSamples(Dataset):
    """The training stream's samples: key ``epoch * n + i`` (``StreamBatchSampler``) is sample ``i``
    augmented with the draws of ``(seed, epoch, i)``, whatever worker or process reads it."""

    def __init__(self, dataset: SegmentationDataset, transform, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(key, len(self.dataset))
        return self.dataset.sample(index, transform=self.transform, augment_seed=augment_seed(self.seed, epoch))


def _run_folder(config: Config) -> Path:
    name = config.train.name or f"{config.model.name or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = check_output_folder(Path(config.train.out) / name, "train.out (--out)")
    if (folder / "state.pt").exists():
        raise ValueError(
            f"run folder {folder} already holds a run; continue it with --resume {folder}, or pick another --name"
        )
    return folder


def csv_fields(task: Task) -> list[str]:
    """The columns of a run's ``metrics.csv``: the step, epoch and learning rate, the loss and the task's fields
    for train and val, and the run's clock."""
    return [
        "step",
        "epoch",
        "lr",
        "train_loss",
        *(f"train_{f}" for f in (*task.fields, *task.train_fields)),
        "val_loss",
        *(f"val_{f}" for f in (*task.fields, *task.val_fields)),
        "seconds",
    ]


def _append_csv(path: Path, row: dict, fields: list[str]) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in fields})


def _drop_rows_after(path: Path, step: int) -> None:
    """Removes metrics rows of steps after the resume state (a kill can fall between the row and the state)."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kept = [row for row in rows if int(row["step"]) <= step]
    if len(kept) < len(rows):

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(kept)

        atomic_write(path, write)


class _StopRequest:
    """While training: the first SIGINT (Ctrl-C) or SIGTERM asks the loop to save and stop after the current
    step; a second one stops at once (the last saved checkpoint stays valid)."""

    def __init__(self, show: bool) -> None:
        self.requested, self.show, self._previous = False, show, {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.show:
            print(
                f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                "(send it again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Stopped(Exception):
    """Raised inside the loop after the state was saved on request (Ctrl-C, SIGTERM)."""


def fit(
    config: Config | None,
    *,
    resume: str | Path | None = None,
    progress: bool | None = None,
    task: type[Task] | None = None,
    data_root: str | Path | None = None,
) -> Path:
    """Trains ``config.model`` on ``config.data``; returns the run folder.

    Under ``torchrun`` every process calls it; they train one model with DistributedDataParallel and
    rank 0 prepares the run and writes the run folder (see ``segforge.training.distributed``).

    Args:
        config: the validated configuration (``segforge.config.load_config``); values left at None
            are chosen by the recipe from the data. None with ``resume``.
        resume: a run folder to continue exactly where its last saved state left it (a round's
            end, or mid-round after Ctrl-C or a ``train.checkpoint_minutes`` save).
        progress: show progress bars (default: when stderr is a terminal).
        task: what is trained (``segforge.training.task``): what a batch is, the loss, the round's metrics
            and validation; the loop is the same for every task. Default: the model's (``task_for``).
        data_root: with ``resume``, where the run's data folder is now (it has moved since the run began).

    Raises:
        ValueError: bad data, config or checkpoint (the message names the file or key and the fix).
        TrainingError: the loss became NaN or infinite.
        KeyboardInterrupt: stopped by Ctrl-C or SIGTERM, after saving the resume state.
    """
    clock, state = Clock(), None
    if resume is not None:
        # state.pt alone (one atomic file) holds everything resuming needs, weights included, so a kill
        # between two writes can never pair the weights of one round with the optimizer of another.
        state = load_state(Path(resume) / "state.pt")
        if not isinstance(state, dict) or not {"config", "model", "optimizer"} <= set(state):
            raise ValueError(
                f"{resume}/state.pt is not a segforge training state (it lacks the config, weights and "
                "optimizer a resume needs); resume from the run folder a segforge train wrote"
            )
        if "progress" not in state:
            raise ValueError(
                f"{resume}/state.pt was written by an earlier segforge that counted epochs, not steps; start a new run"
            )
        config = config_from_dict(state["config"])
        if data_root is not None:
            config.data.root = str(Path(data_root).resolve())
        elif config.data.root and not Path(config.data.root).is_dir():
            raise ValueError(
                f"the run's data folder {config.data.root} does not exist (moved or renamed?); say where it is "
                f"now: segforge train --resume {resume} --data FOLDER (fit(..., data_root=) in Python)"
            )
        clock = Clock(before=state["progress"]["seconds"])
    elif config is None:
        raise ValueError("fit needs a config, or resume= a run folder")
    if config.data.max_image_mb is not None:  # an environment variable, so that data-loader workers inherit it
        os.environ[MAX_IMAGE_ENV] = str(config.data.max_image_mb)
    process, device = distributed.start(config.train.device)
    folder, created = None, False
    try:
        if resume is not None:
            folder = Path(resume)
        else:
            config, folder, created = _new_run(config, process, device, progress)
        with _StopRequest(show=process.is_main) as stop:
            return _train(config, task or task_for(config), state, folder, process, device, stop, progress, clock)
    except Exception as err:
        if created and process.is_main and not (folder / "state.pt").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a run that failed before its first save leaves no folder
        if isinstance(err, ValueError) and user_message(err) != str(err):  # raised in a data-loader worker
            raise type(err)(user_message(err)) from None
        raise
    finally:
        distributed.stop(process)


def task_for(config: Config) -> type[Task]:
    """The task that trains ``config.model``: ``InstanceTask`` for an instance model (its declared ``task``),
    ``SeriesSegmentationTask`` for a model of image time series (its declared ``inputs``), ``AdversarialTask`` with
    ``adversarial.enabled``, ``SegmentationTask`` for images."""
    from segforge.models import create_model

    with torch.device("meta"):  # (shapes only: nothing allocated, nothing loaded)
        model = create_model(config.model.name, 2)
    inputs = model.inputs
    if model.task == "instance":
        if config.adversarial.enabled:
            raise ValueError("adversarial training is for semantic models; train mask_rcnn without --adversarial")
        return InstanceTask
    if config.adversarial.enabled:
        if inputs == "series":
            raise ValueError("adversarial training is for image models; train time series without --adversarial")
        return AdversarialTask
    return SeriesSegmentationTask if inputs == "series" else SegmentationTask


def _new_run(
    config: Config, process: distributed.Process, device: torch.device, progress: bool | None
) -> tuple[Config, Path, bool]:
    """Rank 0 prepares the run (data checks, recipe) and writes its folder; every process learns the
    complete config and the folder (or rank 0's error), and whether this call created the folder."""
    result, error = None, None
    if process.is_main:
        try:
            # an unusable --out or a used name fails before the data is read
            check_output_folder(config.train.out, "train.out (--out)")
            if config.train.name:
                _run_folder(config)
            prepared = prepare(config, cuda=device.type == "cuda", progress=progress)
            folder = _run_folder(prepared.config)
            print(prepared.format(), flush=True)
            created = not folder.exists()
            folder.mkdir(parents=True, exist_ok=True)
            result = (str(folder), prepared.write(folder).to_dict(), created)
        except ValueError as err:
            error = str(err)
    result, error = distributed.broadcast((result, error), process)
    if error:
        raise ValueError(error)
    return config_from_dict(result[1]), Path(result[0]), result[2]


@dataclass
class _Session:
    """Everything one process's training session works with, built once by ``_start``."""

    config: Config
    folder: Path
    process: distributed.Process
    device: torch.device
    clock: Clock
    budget: float | None  # seconds, with train.time_budget
    data: Datasets
    task: Task  # the network, its loss, the round's metrics and validation
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: bool
    run: Progress
    batches: object  # the iterator over the training stream's batches
    val_loader: DataLoader | None
    save: functools.partial
    partial: dict | None  # the counts of a round interrupted by a mid-round save
    progress: bool | None  # progress bars: True, False, or None (on a terminal only)
    compilation: StepCompilation  # eager or compiled training steps (train.compile)


def _train(
    config: Config,
    task: type[Task],
    state: dict | None,
    folder: Path,
    process: distributed.Process,
    device: torch.device,
    stop: _StopRequest,
    progress: bool | None,
    clock: Clock,
) -> Path:
    """Setup, the steps in rounds, then the report: the whole run of one process."""
    session = _start(config, task, state, folder, process, device, progress, clock)
    run = session.run
    try:
        _rounds(session, stop)
    except _Stopped as where:
        if process.is_main:
            print(
                f"\nstopped at {where}: saved the state there in {folder}; "
                f"continue with: segforge train --resume {folder}",
                flush=True,
            )
        raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        if process.is_main:
            print(
                f"\ninterrupted at step {run.step}: the last saved state is in {folder}; "
                f"continue with: segforge train --resume {folder}",
                flush=True,
            )
        raise
    if session.data.val is not None and process.is_main:
        session.task.report(folder, progress=progress)
    if process.is_main and session.budget is not None:
        print(f"run time {describe_seconds(clock.elapsed())} of the {config.train.time_budget} budget", flush=True)
    return folder


def _start(
    config: Config,
    task_type: type[Task],
    state: dict | None,
    folder: Path,
    process: distributed.Process,
    device: torch.device,
    progress: bool | None,
    clock: Clock,
) -> _Session:
    """Data, the task (network and loss), optimizer, schedule and the training stream, restored from ``state``
    when resuming."""
    seed_everything(config.train.seed)
    data = build_datasets(config)
    task = task_type.build(config, data, state, process, device)
    net = task.net
    run = Progress(**state["progress"]) if state is not None else _plan_length(config, data, process)
    budget = parse_duration(config.train.time_budget) if config.train.time_budget else None
    if budget is not None and clock.elapsed() >= budget:
        raise ValueError(
            f"the time budget {config.train.time_budget} was spent before training started (reading "
            f"and checking the data took {describe_seconds(clock.elapsed())}); give more time"
        )
    optimizer, scheduler, scaler, amp = _optimization(config, net, run, device, state)
    if state is not None and process.is_main:
        _drop_rows_after(folder / "metrics.csv", run.step)
    info = {
        "config": config.to_dict(),
        "classes": data.train.classes,
        "palette": data.train.palette,
        "ignore_index": data.ignore_index,
        "mean": data.train.mean,
        "std": data.train.std,
        "label_map": sorted(config.data.label_map.items()) if config.data.label_map else None,
    }
    save = functools.partial(_save, folder, net, optimizer, scheduler, scaler, config, info, run, clock, task)
    batches, val_loader = _loaders(config, data, task, run, process, device)
    quiet = True if not process.is_main else None if progress is None else not progress
    return _Session(
        config,
        folder,
        process,
        device,
        clock,
        budget,
        data,
        task,
        optimizer,
        scheduler,
        scaler,
        amp,
        run,
        batches,
        val_loader,
        save,
        state.get("round") if state is not None else None,
        None if quiet is None else not quiet,
        StepCompilation.of(config, process, task),
    )


def _optimization(
    config: Config, net: nn.Module, run: Progress, device: torch.device, state: dict | None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler, bool]:
    """The optimizer, the per-step schedule (following ``run``), the gradient scaler and whether mixed precision
    is on; restored from ``state`` with the random generator when resuming."""
    optimizer = create_optimizer(net, config.optimizer)
    scheduler = create_scheduler(optimizer, config.schedule, progress=run)
    if config.train.amp == "on" and device.type != "cuda":
        raise ValueError(
            f"train.amp is 'on' but training runs on {device}: mixed precision needs CUDA; "
            "use amp: auto (on when CUDA is used) or off"
        )
    amp = device.type == "cuda" and config.train.amp != "off"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
    return optimizer, scheduler, scaler, amp


def _loaders(
    config: Config, data: Datasets, task: Task, run: Progress, process: distributed.Process, device: torch.device
) -> tuple[object, DataLoader | None]:
    """The training stream's batches (from the run's batch count on: resuming continues the stream) and the
    validation loader (this process's shard), both batched by the task."""
    sampler = StreamBatchSampler(
        len(data.train),
        config.data.batch_size,
        seed=config.train.seed,
        start=run.batches,
        rank=process.rank,
        world_size=process.world_size,
    )
    transform = build_transforms(
        config.data.augmentation,
        ignore_index=data.ignore_index,
        crop_size=config.data.crop_size,
        seed=config.train.seed,
    )
    workers = loader_workers(config.data.workers, device)
    if workers:
        stop_opencv_threads()
    loader_options = {
        "num_workers": workers,
        "collate_fn": task.collate(),
        "worker_init_fn": _worker_init,
        "pin_memory": device.type == "cuda",
        # worker seeds come from here, not from the global RNG, which stays the model's (dropout)
        "generator": torch.Generator().manual_seed(config.train.seed),
    }
    batches = iter(
        DataLoader(EpochSamples(data.train, transform, config.train.seed), batch_sampler=sampler, **loader_options)
    )
    val_loader = (
        DataLoader(data.val, batch_size=1, sampler=distributed.shard(len(data.val), process), **loader_options)
        if data.val is not None
        else None
    )
    return batches, val_loader


def loader_workers(workers: int | str, device: torch.device) -> int:
    """``data.workers``; ``auto``: 0 on the CPU, where worker processes only take cores from the network's
    threads (``segforge train`` ran 1.12-1.20x the bare step with 2 workers, 1.03-1.08x with none, on 2 cores), and
    2 with CUDA, where the cores are free while the GPU computes."""
    if workers != "auto":
        return int(workers)
    return 2 if device.type == "cuda" else 0


def _plan_length(config: Config, data: Datasets, process: distributed.Process) -> Progress:
    """A new run's length in steps, its validation interval and warm-up, from epochs, iterations or the budget."""
    batches_per_epoch = StreamBatchSampler(
        len(data.train), config.data.batch_size, world_size=process.world_size
    ).batches_per_epoch
    steps_per_epoch = math.ceil(batches_per_epoch / config.train.accumulate)
    train = config.train
    if train.time_budget is not None:
        total = train.iterations or 10**9  # fitted after the first steps; iterations, if given, caps it
    elif train.iterations is not None:
        total = train.iterations
    elif train.epochs is not None:
        total = train.epochs * steps_per_epoch
    else:
        raise ValueError(
            "the run's length is not set: give train.epochs, train.iterations or train.time_budget "
            "(--epochs, --iterations, --time-budget)"
        )
    if train.eval_steps is not None:
        eval_steps = train.eval_steps
    elif train.epochs is not None and train.iterations is None and train.time_budget is None:
        eval_steps = train.eval_every * steps_per_epoch
    else:
        eval_steps = recipe.eval_steps(total)
    warmup = config.schedule.warmup_iters
    if warmup is None:
        warmup = recipe.warmup_steps(total) if train.time_budget is None else recipe.MAX_WARMUP
    return Progress(
        total_steps=total, eval_steps=min(eval_steps, total), warmup_steps=warmup, steps_per_epoch=steps_per_epoch
    )


def _rounds(s: _Session, stop: _StopRequest) -> None:
    """Optimizer steps until the run's total: for each, a step over the next batches, the bookkeeping (speed,
    progress bar, time budget), then either the round's end (every ``eval_steps``: validate, log, save) or a
    mid-round save when one is due or asked for."""
    run = s.run
    round_ = _Round.start(s.task, s.partial, s.process.is_main)
    saves = _SaveClock(s.config.train.checkpoint_minutes)
    if s.compilation.resumes_compiled(run.compiled):
        if s.process.is_main:
            print(f"train.compile {s.compilation.mode}: compiling the training step (a slow first step)", flush=True)
        s.compilation.switch(s.task)
    with _progress_bar(s) as bar:
        while run.step < run.total_steps:
            started = time.perf_counter()
            agreed = _optimizer_step(s, round_, stop.requested, saves.due(), _out_of_time(s))
            _bookkeeping(s, round_, bar, started)
            if agreed.out_of_time or run.step - run.last_eval >= run.eval_steps or run.step >= run.total_steps:
                if _close_round(s, round_, agreed, bar):
                    return
                round_ = _Round.start(s.task, None, s.process.is_main)
                saves.reset()
            elif agreed.stop or agreed.save:
                partial = round_.partial(s.process)  # (a collective call)
                if s.process.is_main:
                    s.save(partial=partial)
                saves.reset()
                if agreed.stop:
                    raise _Stopped(f"step {run.step}")


class _Agreed(NamedTuple):
    """What every process decided after a step: stop (Ctrl-C, SIGTERM), save now, the time budget is spent."""

    stop: bool
    save: bool
    out_of_time: bool


class _SaveClock:
    """When a mid-round save of the resume state is due: ``minutes`` after the last save (0: never)."""

    def __init__(self, minutes: float) -> None:
        self.every, self.last = 60 * minutes, time.monotonic()

    def due(self) -> bool:
        return self.every > 0 and time.monotonic() - self.last >= self.every

    def reset(self) -> None:
        self.last = time.monotonic()


def _progress_bar(s: _Session) -> tqdm:
    return tqdm(
        total=s.run.total_steps,
        initial=s.run.step,
        desc="train",
        unit="step",
        leave=False,
        dynamic_ncols=True,
        disable=None if s.progress is None else not s.progress,  # None: a bar on a terminal only
    )


@dataclass
class _Round:
    """What the steps of one round add up: the task's metrics (a segmentation's confusion matrix), the loss and
    the batch count."""

    metrics: RoundMetrics
    loss: float = 0.0
    batches: int = 0

    @classmethod
    def start(cls, task: Task, partial: dict | None, main: bool) -> _Round:
        round_ = cls(task.round_metrics())
        if partial is not None:  # the counts of the batches before a mid-round save
            round_.loss, round_.batches = partial["loss"], partial["batches"]
            round_.metrics.restore(partial, main)  # (summed once over the processes at the round's end)
        return round_

    def partial(self, process: distributed.Process) -> dict:
        """What a mid-round save keeps of the round (a collective call: the metrics of every process)."""
        return {**self.metrics.snapshot(process), "loss": self.loss, "batches": self.batches}


def _optimizer_step(s: _Session, round_: _Round, stop: bool, save: bool, spent: bool) -> _Agreed:
    """One optimizer step over ``train.accumulate`` global batches, each its batch → the task's loss → NaN check
    → backward → the round's metrics; returns what the processes agreed on."""
    run, config = s.run, s.config
    s.optimizer.zero_grad(set_to_none=True)
    flags = (stop, save, spent)
    for _ in range(config.train.accumulate):
        batch = s.task.to_device(next(s.batches), s.device)
        try:
            loss_value, outputs, flags = _forward_backward(s, batch, flags)
        except Exception as err:  # the compiled network's first step compiles: it may fail, the batch is still good
            if not (s.compilation.first and is_compile_error(err)):
                raise
            note = s.compilation.fall_back(s.task, err)
            run.compiled = False
            if s.process.is_main:
                print(note, flush=True)
            s.optimizer.zero_grad(set_to_none=True)  # (the first batch of the step: nothing else accumulated)
            loss_value, outputs, flags = _forward_backward(s, batch, flags)
        round_.metrics.update(batch, outputs)
        round_.loss += loss_value
        round_.batches += 1
        run.batches += 1
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.scheduler.step()
    run.step += 1
    return _Agreed(*flags)


def _forward_backward(s: _Session, batch, flags: tuple[bool, ...]) -> tuple[float, object, tuple[bool, ...]]:
    """The task's loss of one batch, agreed over the processes and checked, then its gradients."""
    run, config = s.run, s.config
    with torch.autocast(s.device.type, enabled=s.amp):
        loss, outputs = s.task.forward(batch)
    loss_value, *flags = _agree(loss.detach(), flags, s.process)
    if not math.isfinite(loss_value):
        where = f"at step {run.step + 1} (epoch {math.floor(run.epoch) + 1}, batch {run.batches + 1})"
        raise _diverged(s, f"the loss became {loss_value} {where}")
    s.scaler.scale(loss / config.train.accumulate).backward()
    return loss_value, outputs, tuple(flags)


def _diverged(s: _Session, what: str) -> TrainingError:
    """The NaN stop: what became non-finite, what to try, and where the last good weights are."""
    saved = (
        f"the last good weights are {s.folder / 'last.safetensors'}"
        if (s.folder / "last.safetensors").exists()
        else "no checkpoint was saved before it, so the run folder was removed"
    )
    return TrainingError(
        f"{what}: lower the learning rate (optimizer.lr = {s.config.optimizer.lr}), add warm-up "
        f"(schedule.warmup_iters), or turn off mixed precision (train.amp: off); {saved}"
    )


def _agree(loss: torch.Tensor, flags: tuple[bool, ...], process: distributed.Process) -> tuple:
    """The mean loss over the processes and whether any of them raised each flag (stop, save, out of time):
    one small all-reduce per batch, so every process takes the same decision at the same step."""
    if not process.distributed:
        return (loss.item(), *flags)
    values = torch.stack([loss.float(), *(loss.new_tensor(float(flag)) for flag in flags)])
    distributed.all_reduce_sum(values, process)
    total, *raised = values.tolist()
    return (total / process.world_size, *(count > 0 for count in raised))


def _out_of_time(s: _Session) -> bool:
    """Whether the next step, one more round and the final report would overrun the time budget."""
    run = s.run
    return (
        s.budget is not None
        and run.fitted
        and s.clock.elapsed() + _final_seconds(run, s.data) + _step_seconds(run) >= s.budget
    )


def _bookkeeping(s: _Session, round_: _Round, bar: tqdm, started: float) -> None:
    """After a step: its time (the first warms up allocations and workers: not a measure of speed), the progress
    bar, and with a time budget, the check after the first step and the fit after the first measured ones."""
    run, compilation = s.run, s.compilation
    if compilation.first:  # it compiled: the compiled steps' times replace the eager ones from the next on
        compilation.first, compilation.retime = False, True
    elif run.step > 1:
        if compilation.retime:
            run.step_seconds, run.timed_steps, compilation.retime = 0.0, 0, False
        run.step_seconds += time.perf_counter() - started
        run.timed_steps += 1
    bar.update(1)
    bar.set_postfix(loss=f"{round_.loss / max(round_.batches, 1):.4f}")
    if s.budget is not None and run.step == 1:
        _check_budget(s.config, s.clock, s.budget, time.perf_counter() - started, s.data)
    if s.budget is not None and not run.fitted and run.timed_steps >= MEASURED_STEPS:
        _fit_to_budget(run, s.budget, s.clock, s.config, s.data, s.process)
        bar.total = run.total_steps
    if compilation.pending and run.timed_steps >= MEASURED_STEPS:
        _compile_if_it_pays(s)
    elif compilation.on_trial and not compilation.retime and run.timed_steps >= MEASURED_STEPS:
        _judge_compiled(s)


def _compile_if_it_pays(s: _Session) -> None:
    """``train.compile: auto``, after the first measured steps: compiles when the eager training left is long
    enough for a minute of compiling to pay back."""
    run = s.run
    if s.budget is not None:
        left = s.budget - s.clock.elapsed() - _final_seconds(run, s.data)
    else:
        left = (run.total_steps - run.step) * _step_seconds(run)
    if s.compilation.pays(left):
        run.compiled = True
        if s.process.is_main:
            print(
                f"train.compile auto: compiling the training step (about {describe_seconds(left)} of training "
                "left); the next step takes longer",
                flush=True,
            )
        s.compilation.switch(s.task, trial_against=_step_seconds(run))


def _judge_compiled(s: _Session) -> None:
    """``train.compile: auto``, after the compiled step's first measured steps: keeps it if it is faster."""
    run, eager = s.run, s.compilation.eager_seconds
    compiled = _step_seconds(run)
    kept = s.compilation.keeps(s.task, compiled)
    run.compiled = kept
    if not kept:  # the eager steps' times again, their earlier average as the first
        run.step_seconds, run.timed_steps = eager, 1
    if s.process.is_main:
        verdict = "keeping it" if kept else "going on eager"
        print(
            f"train.compile auto: {compiled:.2f} s per compiled step against {eager:.2f} s eager: {verdict}",
            flush=True,
        )


def _close_round(s: _Session, round_: _Round, agreed: _Agreed, bar: tqdm) -> bool:
    """Ends a round (validate, log, save) and refits a time budget; returns whether the run ends here (the
    budget is spent, or early stopping); raises ``_Stopped`` when a stop was asked for."""
    run, main = s.run, s.process.is_main
    best = _end_round(s, round_)
    if s.budget is not None and run.fitted and not agreed.out_of_time and run.step < run.total_steps:
        _fit_to_budget(run, s.budget, s.clock, s.config, s.data, s.process)
        bar.total = run.total_steps
    if agreed.stop:
        raise _Stopped(f"step {run.step}")
    if agreed.out_of_time:
        if main:
            print(
                f"time budget {s.config.train.time_budget} spent at step {run.step}: stopping; the resume state "
                f"is saved in {s.folder}",
                flush=True,
            )
        return True
    if s.config.train.early_stop and run.stale >= s.config.train.early_stop and not best:
        if main:
            print(f"early stop: no better val {s.task.score} for {run.stale} validations", flush=True)
        return True
    return False


def _end_round(s: _Session, round_: _Round) -> bool:
    """Validates, logs a row and saves; returns whether the model is the best so far."""
    started, run, task = time.perf_counter(), s.run, s.task
    epoch = run.epoch
    row = {
        "step": run.step,
        "epoch": f"{epoch:.0f}" if epoch == round(epoch) else f"{epoch:.2f}",
        "lr": f"{s.optimizer.param_groups[0]['lr']:.6g}",
        "train_loss": f"{round_.loss / max(round_.batches, 1):.6f}",
        **{f"train_{key}": f"{value:.6f}" for key, value in round_.metrics.row().items()},
    }
    improved = s.val_loader is None
    if s.val_loader is not None:
        _share_buffers(task.net, s.process)  # every process evaluates with rank 0's batch-norm statistics
        try:
            val = task.validate(s.val_loader, progress=s.progress, process=s.process)
        except NonFiniteOutput:  # the weights diverged in this round: nothing of it is saved
            raise _diverged(s, f"the network's output on the validation images became NaN at step {run.step}") from None
        row |= {f"val_{key}": f"{value:.6f}" for key, value in val.items()}
        improved = val[task.score] > run.best_iou  # (best_iou: the best score so far, whatever the task's)
        run.best_iou, run.stale = (val[task.score], 0) if improved else (run.best_iou, run.stale + 1)
    run.last_eval = run.step
    row["seconds"] = f"{s.clock.elapsed():.1f}"
    if s.process.is_main:
        _append_csv(s.folder / "metrics.csv", row, csv_fields(task))
        plot_curves(s.folder / "metrics.csv", s.folder / "curves.png")
        s.save(best=improved)
        run.round_seconds = time.perf_counter() - started
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return improved


def _share_buffers(net: nn.Module, process: distributed.Process) -> None:
    """Copies rank 0's buffers (batch-norm running statistics, which each process updated from its own
    images since the last forward) to every process, so all evaluate the checkpoint rank 0 saves."""
    if process.distributed:
        for buffer in net.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _step_seconds(run: Progress) -> float:
    return run.step_seconds / max(run.timed_steps, 1)


def _final_seconds(run: Progress, data: Datasets) -> float:
    """What the run needs after its last step: one more round, and the report of the best checkpoint."""
    return 2.2 * run.round_seconds + 5.0 if data.val is not None else run.round_seconds + 2.0


def _estimate_round_seconds(config: Config, data: Datasets, step_seconds: float) -> float:
    """Before the first validation: its seconds, from the training speed (a forward pass costs about a
    third of a training step per pixel), plus a second for the row and the checkpoints."""
    if data.val is None:
        return 1.0
    image = data.val[0][0]  # (an image's sample is (image, mask); a series' has its dates' validity too)
    val_pixels = image.shape[-1] * image.shape[-2]
    crop = config.data.crop_size
    train_pixels = config.data.batch_size * (crop * crop if crop else val_pixels)
    return len(data.val) * val_pixels * step_seconds / train_pixels / 3 + 1.0


def _check_budget(config: Config, clock: Clock, budget: float, first_step: float, data: Datasets) -> None:
    """After the first step: a budget too short for training at all is an error that says what would fit."""
    final = 2 * _estimate_round_seconds(config, data, first_step)
    if clock.elapsed() + final > budget:
        needed = clock.elapsed() + final + 50 * first_step
        raise ValueError(
            f"the time budget {config.train.time_budget} is too short to train: preparing took "
            f"{describe_seconds(clock.elapsed() - first_step)}, one step {first_step:.1f} s, and the "
            f"final evaluation needs about {describe_seconds(final)}; give at least "
            f"--time-budget {math.ceil(needed / 60)}m (50 steps), or a smaller --crop-size/--batch-size"
        )


def _fit_to_budget(
    run: Progress, budget: float, clock: Clock, config: Config, data: Datasets, process: distributed.Process
) -> None:
    """Refits the run's total steps (and, the first time, its validation interval and warm-up) to the time
    left; rank 0 decides for every process."""
    fitted, first = None, not run.fitted
    if process.is_main:
        step_seconds = _step_seconds(run)
        run.round_seconds = run.round_seconds or _estimate_round_seconds(config, data, step_seconds)
        round_seconds, final_seconds = run.round_seconds, _final_seconds(run, data)
        if first and config.train.eval_steps is None:  # about VALIDATIONS rounds, if they cost under a tenth
            estimate = fit_steps(
                budget - recipe.VALIDATIONS * round_seconds,
                elapsed=clock.elapsed(),
                step=run.step,
                step_seconds=step_seconds,
                validation_seconds=0,
                eval_steps=1,
                final_seconds=final_seconds,
            )
            run.eval_steps = recipe.eval_steps(estimate, validation_seconds=round_seconds, step_seconds=step_seconds)
        total = fit_steps(
            budget,
            elapsed=clock.elapsed(),
            step=run.step,
            step_seconds=step_seconds,
            validation_seconds=round_seconds,
            eval_steps=run.eval_steps,
            final_seconds=final_seconds,
        )
        total = min(max(total, run.step + 1), config.train.iterations or total)
        if first and config.schedule.warmup_iters is None:
            run.warmup_steps = max(recipe.warmup_steps(total), run.step)
        fitted = (total, run.eval_steps, run.warmup_steps)
        if first:
            print(
                f"time budget {config.train.time_budget}: {step_seconds:.2f} s per step measured, {total} steps "
                f"fit (validation every {run.eval_steps} steps, about {round_seconds:.0f} s each; warm-up "
                f"{run.warmup_steps} steps)",
                flush=True,
            )
    total, run.eval_steps, run.warmup_steps = distributed.broadcast(fitted, process)
    run.refit(total)
    run.fitted = True


def _save(
    folder: Path,
    model,
    optimizer,
    scheduler,
    scaler,
    config: Config,
    info: dict,
    run: Progress,
    clock: Clock,
    task: Task,
    *,
    best: bool = False,
    partial: dict | None = None,
) -> None:
    """Writes the resume state (with what the task keeps besides the network: ``task.state()``), then last
    (and best) weights; each file atomically. The checkpoints' info records the best validation score so far
    (``best_mean_iou`` for segmentation).

    A mid-round save (``partial``: the round's confusion matrix, loss and batches so far) writes the
    resume state only.
    """
    run.seconds = clock.elapsed()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "config": config.to_dict(),
        "progress": dataclasses.asdict(run),
        "torch_rng": torch.get_rng_state(),
        "model_config": model.config,
    }
    extra = task.state()
    if extra:  # (e.g. an adversary and its optimizer: resumed with the run, never in the deployable weights)
        state["task"] = extra
    if partial is not None:
        state["round"] = partial
    save_state(folder / "state.pt", state)
    if partial is not None:
        return
    info = info | {"step": run.step, "epoch": run.epoch, f"best_{task.score}": run.best_iou}
    save_checkpoint(folder / "last.safetensors", model, **info)
    if best:
        save_checkpoint(folder / "best.safetensors", model, **info)
