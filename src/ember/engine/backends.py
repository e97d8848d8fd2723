"""Which decoder engines `ember serve` can run, and whether this machine can run vLLM, without importing
torch or vllm's engine (so `ember serve --backend vllm` fails in a second, with one line, where it cannot run).

    ember serve --backend vllm        # engine/vllm_backend.py; exits 5 "... needs a CUDA GPU ..." without one
"""

from ember.errors import Unsupported

BACKENDS = ("ember", "vllm")


def check_available() -> None:
    """Raises Unsupported (one line, exit code 5 in the CLI) unless vllm imports and sees a CUDA GPU."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise Unsupported(f"--backend vllm needs the vllm package ({e}); install it with `pip install vllm` on "
                          "a machine with a CUDA GPU, or use the default --backend ember") from None
    try:
        from vllm.platforms import current_platform

        gpu = bool(current_platform.is_cuda_alike())
    except Exception:  # noqa: BLE001 - an older vllm without platforms: ask torch
        import torch

        gpu = torch.cuda.is_available()
    if not gpu:
        raise Unsupported("--backend vllm needs a CUDA GPU and none is visible (CUDA_VISIBLE_DEVICES, driver); "
                          "use the default --backend ember on this machine")
