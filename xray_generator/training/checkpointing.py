"""Atomic, pickle-free training checkpoints and resumable loss logs.

A checkpoint is a folder `step-<N>/` holding safetensors files plus `state.json`. The pointer file
`LATEST` names the newest complete folder and is replaced atomically only after that folder is fully
written, so a run killed at any moment leaves the previous checkpoint intact and loses at most one
checkpoint interval.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from xray_generator.io import atomic_write_text


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten an optimizer state dict into tensors plus a JSON string, so no pickle is needed."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, slot in state["state"].items():
        for name, value in slot.items():
            key = f"{index}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.contiguous()
            else:
                scalars[key] = value
    return tensors, json.dumps({"param_groups": state["param_groups"], "scalars": scalars})


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: str) -> None:
    info = json.loads(meta)
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(info["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def utc_timestamp() -> str:
    """Now, in UTC, as ISO 8601 to the second: how checkpoints and model cards date things."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CheckpointDir:
    """Manages `step-<N>/` folders and the `LATEST` pointer inside a run folder.

    Every checkpoint's state.json also says when the run trained, so a model card can date it from
    the run itself: `started` (when the run first opened its folder, carried through resumes) and
    `updated` (when this checkpoint was written), both UTC.
    """

    def __init__(self, run_dir: str | Path, keep: int = 2):
        self.run_dir = Path(run_dir)
        self.keep = keep
        # A trainer opens its run folder before its first step: the run's start unless it resumes a checkpoint.
        self.opened = utc_timestamp()

    @property
    def pointer(self) -> Path:
        return self.run_dir / "LATEST"

    def latest(self) -> Path | None:
        if not self.pointer.is_file():
            return None
        folder = self.run_dir / self.pointer.read_text().strip()
        return folder if (folder / "state.json").is_file() else None

    def save(self, step: int, modules: dict[str, dict[str, torch.Tensor]], state: dict, optimizers: dict[str, torch.optim.Optimizer]) -> Path:
        name = f"step-{step:08d}"
        final = self.run_dir / name
        staging = self.run_dir / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for module_name, tensors in modules.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, staging / f"{module_name}.safetensors")
        for opt_name, optimizer in optimizers.items():
            tensors, meta = optimizer_to_tensors(optimizer)
            save_file(tensors, staging / f"{opt_name}.safetensors", metadata={"optimizer": meta})
        rng = {"torch_rng": torch.get_rng_state()}
        save_file(rng, staging / "rng.safetensors")
        state = {**state, "started": state.get("started", self.opened), "updated": utc_timestamp()}
        (staging / "state.json").write_text(json.dumps(state, indent=2))
        for child in staging.iterdir():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        atomic_write_text(self.pointer, name + "\n")
        self._prune(current=name)
        return final

    def load(self, folder: Path, optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        modules = {}
        for file in folder.glob("*.safetensors"):
            stem = file.stem
            if stem in optimizers:
                from safetensors import safe_open

                with safe_open(str(file), "pt") as handle:
                    meta = handle.metadata()["optimizer"]
                optimizer_from_tensors(optimizers[stem], load_file(str(file)), meta)
            elif stem == "rng":
                torch.set_rng_state(load_file(str(file))["torch_rng"])
            else:
                modules[stem] = load_file(str(file))
        state = json.loads((folder / "state.json").read_text())
        # A checkpoint written before checkpoints were dated: the run's start is unknown, not this resume's time.
        state.setdefault("started", None)
        return modules, state

    def _prune(self, current: str) -> None:
        folders = sorted(p for p in self.run_dir.glob("step-*") if p.is_dir())
        for old in folders[: max(0, len(folders) - self.keep)]:
            if old.name != current:
                shutil.rmtree(old, ignore_errors=True)
        for partial in self.run_dir.glob(".step-*.partial"):
            shutil.rmtree(partial, ignore_errors=True)


class CheckpointSchedule:
    """When a training session saves: every `interval_minutes`, when its time budget is spent, and at the last step.

    Also keeps the run's wall time across sessions: `wall_seconds_before` is what the resumed
    checkpoint recorded, and `wall_seconds()` adds this session's time to it.
    """

    def __init__(self, interval_minutes: float, max_minutes: float | None = None, wall_seconds_before: float = 0.0):
        self.interval_seconds = interval_minutes * 60.0
        self.max_seconds = None if max_minutes is None else max_minutes * 60.0
        self.wall_seconds_before = wall_seconds_before
        self.session_start = self.last_checkpoint = time.time()

    def wall_seconds(self) -> float:
        return self.wall_seconds_before + time.time() - self.session_start

    def out_of_time(self) -> bool:
        return self.max_seconds is not None and time.time() - self.session_start >= self.max_seconds

    def due(self, finished: bool = False) -> bool:
        """True when a checkpoint should be written now: the interval has passed, the budget is spent, or the run is finished."""
        return finished or self.out_of_time() or time.time() - self.last_checkpoint >= self.interval_seconds

    def saved(self) -> None:
        self.last_checkpoint = time.time()


class LossLog:
    """An append-only CSV of training metrics that a dashboard can plot; truncated on resume."""

    def __init__(self, path: str | Path, fields: list[str]):
        self.path = Path(path)
        self.fields = fields

    def truncate_after(self, step: int) -> None:
        """Drop rows written after the checkpoint we resume from, so the log matches the weights."""
        if not self.path.is_file():
            return
        with open(self.path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(float(row["step"])) <= step]
        lines = [",".join(self.fields)] + [",".join(str(row.get(f, "")) for f in self.fields) for row in rows]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as handle:
            if new:
                handle.write(",".join(self.fields) + "\n")
            handle.write(",".join(_fmt(row.get(f, "")) for f in self.fields) + "\n")
            handle.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class EMA:
    """Exponential moving average of a module's float parameters (kept in fp32)."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in module.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int | None = None) -> None:
        # Warm-up (as in diffusers' EMAModel): early on, the average follows the weights closely,
        # so a short run's EMA is not dominated by its random initialisation.
        decay = self.decay if step is None else min(self.decay, (1 + step) / (10 + step))
        for key, value in module.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value.detach().float(), 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.shadow = {k: v.float().clone() for k, v in tensors.items()}

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict({**module.state_dict(), **{k: v.to(module.state_dict()[k].dtype) for k, v in self.shadow.items()}})


def latest_ema_model(run_dir: str | Path, build: Callable[[dict], torch.nn.Module], snapshot: str = "ema") -> tuple[torch.nn.Module, dict, dict]:
    """(model, checkpoint state, run config): `build(config)` loaded with the latest checkpoint's `snapshot` EMA weights.

    The exporters' common start: what ships is an EMA snapshot, never the raw training weights.
    """
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    latest = CheckpointDir(run_dir).latest()
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    model = build(config)
    ema = EMA(model)
    ema.load_state_dict(load_file(str(latest / f"{snapshot}.safetensors")))
    ema.copy_to(model)
    return model, json.loads((latest / "state.json").read_text()), config


def add_train_command(subparsers, help: str, run_help: str = "run folder for checkpoints and the loss log"):
    """The `train` subcommand every trainer shares: one config, one run folder, resumable, time-boxed."""
    train = subparsers.add_parser("train", help=help)
    train.add_argument("--config", required=True)
    train.add_argument("--run", required=True, help=run_help)
    train.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    train.add_argument("--max-minutes", type=float, default=None, help="stop (after a checkpoint) when this much time has passed")
    train.add_argument("--data-dir", default=None, help="folder with metadata.csv (default: the full set, else the sample)")
    return train


# ---------------------------------------------------------------------------- several processes (accelerate, DDP)
# A trainer draws the GLOBAL batch (batch_size x processes) from generators seeded the same on every
# process and each process trains on its slice, so N processes with batch B take the steps one process
# takes with batch N x B (DDP averages the gradients of the slices), up to floating-point order and
# BatchNorm, whose statistics stay per process (SyncBatchNorm needs GPUs).
def process_slice(accelerator, per_process: int) -> slice:
    """This process's part of a global batch of `per_process` x `num_processes` samples."""
    start = accelerator.process_index * per_process
    return slice(start, start + per_process)


def agreed(accelerator, flag: bool) -> bool:
    """The main process's `flag` on every process: a time budget read from each process's clock could split them, and a
    process that leaves the loop early would leave the others waiting forever in their next gradient all-reduce."""
    if accelerator.num_processes == 1:
        return flag
    from accelerate.utils import broadcast

    return bool(broadcast(torch.tensor([int(flag)], device=accelerator.device), from_process=0).item())


def parameters_digest(modules: dict[str, torch.nn.Module]) -> str:
    """sha256 of every parameter of `modules`, in name order.

    Buffers are left out: DDP copies the main process's buffers (BatchNorm running statistics) to the
    others at the start of each forward pass, so after the last step each process holds its own.
    """
    import hashlib

    digest = hashlib.sha256()
    for prefix, module in sorted(modules.items()):
        for name, tensor in sorted(module.named_parameters()):
            digest.update(f"{prefix}.{name}".encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_ranks_agree(accelerator, modules: dict[str, torch.nn.Module], run_dir: str | Path) -> list[str]:
    """Every process's weights digest; the main process writes them to `ranks.json` and raises if DDP let them drift apart."""
    digest = parameters_digest(modules)
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        digests = gather_object([digest])
    else:
        digests = [digest]
    if accelerator.is_main_process:
        atomic_write_text(Path(run_dir) / "ranks.json", json.dumps({"processes": accelerator.num_processes, "weights_sha256_by_rank": digests}, indent=2) + "\n")
        if len(set(digests)) > 1:
            raise RuntimeError(f"the processes' weights differ after training ({digests}); the run is not data-parallel as it should be")
    return digests
