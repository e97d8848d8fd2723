import os


class _Platform:
    def is_cuda_alike(self) -> bool:
        return os.environ.get("FAKE_VLLM_GPU", "1") != "0"


current_platform = _Platform()
