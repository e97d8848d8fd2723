"""One SmolLM2 engine (and its transformers twin) per test session; loading costs seconds each."""

import pytest
import torch


@pytest.fixture(scope="session")
def smol_engine(smollm2_dir):
    from ember.engine.engine import Engine

    engine = Engine.load(smollm2_dir, max_slots=16, max_seq_len=1024)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smol_hf(smollm2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
