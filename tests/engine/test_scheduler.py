"""Scheduler: choices 1..n-1 of a request copy choice 0's prompt cache instead of prefilling it again.

    .venv/bin/python -m pytest tests/engine/test_scheduler.py -q
"""

import torch

from ember.engine.sampling import SamplingParams
from ember.engine.scheduler import Request, Scheduler, Sequence


def _request(n: int, prompt: list[int]) -> Request:
    req = Request("r", prompt, SamplingParams(n=n), None)
    for i in range(n):
        req.seqs.append(Sequence(req, i, prompt, req.params, None, None, 8, parent=req.seqs[0] if i else None))
    return req


def test_n_choices_prefill_the_prompt_once():
    sched = Scheduler(max_slots=4, step_tokens=256)
    req = _request(3, list(range(10)))
    sched.add(req.seqs)
    decode, prefill, copies = sched.schedule()
    assert [(s.index, n) for s, n in prefill] == [(0, 10)] and not copies  # the others wait for choice 0
    req.seqs[0].n_cached = 10
    req.seqs[0].output_ids.append(5)
    decode, prefill, copies = sched.schedule()
    s0, s1, s2 = req.seqs
    assert decode == [s0]
    assert copies == [(s0.slot, s1.slot, 9), (s0.slot, s2.slot, 9)]
    assert [(s.index, n) for s, n in prefill] == [(1, 1), (2, 1)]  # only the last prompt token, for its logits


def test_a_choice_whose_parent_is_gone_prefills_alone():
    sched = Scheduler(max_slots=1, step_tokens=256)
    req = _request(2, list(range(6)))
    sched.add(req.seqs)
    sched.schedule()
    s0, s1 = req.seqs
    s0.n_cached = 6
    s0.finish_reason = "length"
    sched.release(s0)  # choice 0 ended (max_tokens=1, say) before choice 1 got a slot
    _, prefill, copies = sched.schedule()
    assert not copies and [(s.index, n) for s, n in prefill] == [(1, 6)]


def test_greedy_choices_equal_a_single_greedy_request(smol_engine):
    prompt = "The three primary colors are"
    one = smol_engine.generate([prompt], SamplingParams(temperature=0, max_tokens=24))[0].choices[0].token_ids
    many = smol_engine.generate([prompt], SamplingParams(temperature=0, n=3, max_tokens=24))[0]
    assert [c.token_ids for c in many.choices] == [one] * 3
    assert many.usage.prompt_tokens == len(smol_engine.encode(prompt))
