"""Where training runs: device, precision and the ranks of a torchrun launch.

The training loop itself is the transformers Trainer (see `compress.training`), which sets up DDP on its own
when the process was started by `torchrun --nproc_per_node N ...` (it reads LOCAL_RANK / WORLD_SIZE). What it
does not decide well on its own is the CPU case: in transformers 4.57.6 + accelerate 1.15, a torchrun launch
on a machine without CUDA and without `use_cpu=True` ends with *no* process group (accelerate's
`PartialState._prepare_backend` only picks gloo when told it is on CPU), so every rank would train its own
model on the whole data set and nobody would notice. `device_settings` therefore sets `use_cpu` whenever CUDA
is absent; accelerate then initialises gloo (nccl on CUDA is its default).
"""

from __future__ import annotations

import datetime
import os

import torch


def device_settings(precision: str = "auto") -> dict:
    """TrainingArguments fields for this machine: CUDA with mixed precision when present, else CPU fp32.

    `precision` "auto": bf16 where the GPU supports it (no loss scaling needed), fp16 on an older GPU, float32 on
    CPU. Nothing to change in the code or the recipe when moving between a laptop, a GPU box and a torchrun launch.
    "fp32": float32 everywhere. "bf16": bf16 autocast on CPU too (and on a GPU that has it).
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', not {precision!r}")
    cuda = torch.cuda.is_available()
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("precision 'bf16': this GPU has no bf16 (use 'auto', which takes fp16 with loss scaling)")
    bf16 = precision == "bf16" or (precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    return {
        "use_cpu": not cuda,
        "bf16": bf16,
        "fp16": precision == "auto" and cuda and not bf16,
        "dataloader_pin_memory": cuda,
        "ddp_backend": None,  # accelerate: nccl on CUDA, gloo with use_cpu (an explicit "gloo" breaks 1 process)
    }


def world_size() -> int:
    """Processes in this launch (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this process should write artifacts, manifests and reports (rank 0)."""
    return rank() == 0


def describe_runtime(precision: str = "auto") -> dict:
    """Recorded with a stage's metrics: how it was trained."""
    s = device_settings(precision)
    return {
        "world_size": world_size(),
        "device": "cpu" if s["use_cpu"] else "cuda",
        "precision": "bf16" if s["bf16"] else "fp16" if s["fp16"] else "fp32",
        "backend": ("gloo" if s["use_cpu"] else "nccl") if world_size() > 1 else None,
    }


def join_process_group() -> None:
    """Join the launch's process group (gloo on CPU, nccl on CUDA) before anything else uses it; the Trainer's
    accelerate then takes this group as it is.

    Its collective timeout is long on purpose: in a pipeline run, rank 0 alone runs the steps that do not train
    (export, quantize, benchmark: an hour and more for a large model) while the other ranks wait for the next
    training step, and the default 30 minutes would end the launch.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(days=2))


def agree(value: bool) -> bool:
    """Rank 0's `value`, on every rank of the launch (a broadcast; the other ranks' `value` is ignored)."""
    import torch.distributed as dist

    box = [bool(value)]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])
