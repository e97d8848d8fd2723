"""A tiny stand-in for the third-party `vllm` package, for CPU tests of `ember serve --backend vllm`.

It is put first on PYTHONPATH (tests/fakes) by the tests that need it, so Ember's real adapter
(engine/vllm_backend.py) imports it exactly as it imports vLLM: `vllm.SamplingParams`,
`vllm.platforms.current_platform`, `vllm.engine.arg_utils.AsyncEngineArgs`, `vllm.v1.engine.async_llm.AsyncLLM`.
Only the surface the adapter uses exists, with vLLM's names and shapes (RequestOutput, CompletionOutput,
Logprob, DELTA output kind). Generation is a deterministic walk over a few token ids, a step per 20 ms.
FAKE_VLLM_GPU=0 makes the platform report no GPU.
"""


class SamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.kwargs = kw


from vllm.v1.engine.async_llm import AsyncLLM as AsyncLLMEngine  # noqa: E402,F401
