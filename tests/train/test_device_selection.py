"""Device, process-group backend and autocast choices of `ember train` / `ember finetune`: CUDA + NCCL + bf16
when a GPU is there, CPU + gloo + fp32 otherwise (the CPU path unchanged). The GPU branch is checked through
the same pure functions setup() and the loop call, since no GPU is available to the test suite."""

import torch

from ember.train import distributed
from ember.train.loop import autocast_dtype


def test_gpu_ranks_use_their_local_cuda_device_and_nccl():
    assert distributed.choose(True, 0) == (torch.device("cuda", 0), "nccl")
    assert distributed.choose(True, 3) == (torch.device("cuda", 3), "nccl")


def test_cpu_ranks_use_gloo():
    assert distributed.choose(False, 1) == (torch.device("cpu"), "gloo")
    if not torch.cuda.is_available():
        info = distributed.setup()  # not under torchrun: no process group, rank 0 of 1, on the CPU
        assert (info.rank, info.world_size, info.device.type) == (0, 1, "cpu")


def test_autocast_is_bf16_on_gpus_that_have_it_and_off_on_cpu_by_default():
    assert autocast_dtype("cuda", "auto", bf16_ok=True) == torch.bfloat16
    assert autocast_dtype("cuda", "auto", bf16_ok=False) is None  # an old GPU: fp32 rather than a bad guess
    assert autocast_dtype("cpu", "auto", bf16_ok=False) is None  # CPU training stays fp32
    assert autocast_dtype("cpu", "bf16", bf16_ok=False) == torch.bfloat16  # asked for explicitly
    assert autocast_dtype("cuda", "fp16", bf16_ok=True) == torch.float16
    assert autocast_dtype("cuda", "off", bf16_ok=True) is None
