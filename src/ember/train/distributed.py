"""Process-group setup and model wrapping for DDP / FSDP2 under torchrun.

    torchrun --nproc-per-node 2 -m ember train gpt --config configs/gpt-tiny.yaml          # DDP
    torchrun --nproc-per-node 2 -m ember train gpt --config configs/gpt-tiny.yaml --fsdp   # FSDP2
    torchrun --nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        --nproc-per-node 8 -m ember train gpt --config gpt.yaml                            # multi-node

Without torchrun's environment (WORLD_SIZE unset or 1) everything is a no-op and rank is 0.
Backend: nccl when CUDA is available, gloo otherwise.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def choose(cuda: bool, local_rank: int) -> tuple[torch.device, str]:
    """This rank's device and the process group's backend: the local GPU with NCCL when CUDA is there,
    else the CPU with gloo (a CPU-only run is unchanged by a GPU-capable torch)."""
    if cuda:
        return torch.device("cuda", local_rank), "nccl"
    return torch.device("cpu"), "gloo"


def setup() -> DistInfo:
    """Join torchrun's process group when launched under it; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device, backend = choose(cuda, local)
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if cuda else None)
    threads = int(os.environ.get("EMBER_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)  # the user's choice (Settings.threads) wins
    elif world > 1 and not cuda and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores between the local processes instead of oversubscribing them.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistInfo(rank, world, local, device)


def current() -> DistInfo:
    """The DistInfo of an already set-up process (rank 0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        cuda = torch.cuda.is_available()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = choose(cuda, local)[0]
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)
    return DistInfo(device=torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))


def wrap(model: torch.nn.Module, info: DistInfo, *, fsdp: bool = False) -> torch.nn.Module:
    """DDP (or FSDP2 `fully_shard`, per transformer block then the root) when distributed."""
    model.to(info.device)
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks (LlamaDecoderLayer, GPT2Block, BertLayer, ...) of an HF model."""
    names = set(getattr(unwrap(model), "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if blocks:
        return blocks
    return [b for ml in model.modules() if isinstance(ml, torch.nn.ModuleList) for b in ml]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model inside a DDP wrapper (FSDP2 modifies the model in place, so it is itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def is_fsdp(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def no_grad_sync(model: torch.nn.Module, skip: bool):
    """Skip the gradient all-reduce on the non-final micro-batches of an accumulation step."""
    if not skip:
        yield
        return
    if hasattr(model, "no_sync"):
        with model.no_sync():
            yield
        return
    if is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


def all_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
