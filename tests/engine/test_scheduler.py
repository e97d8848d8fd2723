"""Scheduler: choices 1..n-1 of a request copy choice 0's prompt cache instead of prefilling it again.

    .venv/bin/python -m pytest tests/engine/test_scheduler.py -q
"""

import torch

from ember.engine.sampling import SamplingParams
from ember.engine.scheduler import Request, Scheduler, SeqState, Sequence


def _request(n: int, prompt: list[int]) -> Request:
    req = Request("r", prompt, SamplingParams(n=n), None)
    for i in range(n):
        req.seqs.append(Sequence(req, i, prompt, req.params, None, None, 8, parent=req.seqs[0] if i else None))
    return req


def test_n_choices_prefill_the_prompt_once():
    sched = Scheduler(max_slots=4, step_tokens=256)
    req = _request(3, list(range(10)))
    sched.add(req.seqs)
    out = sched.schedule()
    assert [(s.index, n) for s, n in out.prefill] == [(0, 10)] and not out.copies  # the others wait for choice 0
    assert [s.state for s in req.seqs] == [SeqState.PREFILLING, SeqState.PREFILLING, SeqState.PREFILLING]
    sched.update(out)
    req.seqs[0].output_ids.append(5)
    out = sched.schedule()
    decode, prefill, copies = out.decode, out.prefill, out.copies
    s0, s1, s2 = req.seqs
    assert decode == [s0] and s0.state is SeqState.DECODING
    assert copies == [(s0.slot, s1.slot, 9), (s0.slot, s2.slot, 9)]
    assert [(s.index, n) for s, n in prefill] == [(1, 1), (2, 1)]  # only the last prompt token, for its logits


def test_a_choice_whose_parent_is_gone_prefills_alone():
    sched = Scheduler(max_slots=1, step_tokens=256)
    req = _request(2, list(range(6)))
    sched.add(req.seqs)
    sched.update(sched.schedule())
    s0, s1 = req.seqs
    s0.finish_reason = "length"
    sched.release(s0)  # choice 0 ended (max_tokens=1, say) before choice 1 got a slot
    assert s0.state is SeqState.FINISHED and s1.state is SeqState.WAITING
    out = sched.schedule()
    assert not out.copies and [(s.index, n) for s, n in out.prefill] == [(1, 6)]


def test_greedy_choices_equal_a_single_greedy_request(smol_engine):
    prompt = "The three primary colors are"
    one = smol_engine.generate([prompt], SamplingParams(temperature=0, max_tokens=24))[0].choices[0].token_ids
    many = smol_engine.generate([prompt], SamplingParams(temperature=0, n=3, max_tokens=24))[0]
    assert [c.token_ids for c in many.choices] == [one] * 3
    assert many.usage.prompt_tokens == len(smol_engine.encode(prompt))


def _seq(prompt: list[int]) -> Sequence:
    req = Request("r", prompt, SamplingParams(), None)
    req.seqs.append(Sequence(req, 0, prompt, req.params, None, None, 8))
    return req.seqs[0]


def test_a_prompt_reuses_the_free_slot_holding_its_prefix():
    sched = Scheduler(max_slots=3, step_tokens=256)
    first = _seq(list(range(100, 140)))
    other = _seq(list(range(500, 530)))
    sched.add([first, other])
    sched.schedule()
    assert (first.slot, other.slot) == (0, 1)
    first.n_cached, first.output_ids = 45, [7, 8, 9, 10, 11, 12]  # 40 prompt + 5 fed outputs in the cache
    sched.release(first)
    other.n_cached = 30
    sched.release(other)
    turn2 = _seq(list(range(100, 140)) + [7, 8, 9, 99, 98])  # the conversation goes on from 3 outputs in
    sched.add([turn2])
    assert sched.schedule().prefill == [(turn2, 2)]
    assert turn2.slot == 0 and turn2.cached_tokens == 43
    unrelated = _seq(list(range(900, 950)))
    sched.add([unrelated])
    sched.schedule()
    assert unrelated.slot == 1 and unrelated.cached_tokens == 0  # lowest free slot; slot 1's content is lost


def test_an_identical_prompt_still_computes_its_last_token():
    sched = Scheduler(max_slots=1, step_tokens=256)
    a = _seq(list(range(20, 60)))
    sched.add([a])
    sched.schedule()
    a.n_cached = 40
    sched.release(a)
    b = _seq(list(range(20, 60)))
    sched.add([b])
    assert sched.schedule().prefill == [(b, 1)]  # its logits give the first output token
    assert b.cached_tokens == 39


def test_next_chat_turn_reuses_the_cache_and_still_matches_transformers(smol_engine, smol_hf):
    messages = [{"role": "system", "content": "You are a concise assistant who answers in one sentence."},
                {"role": "user", "content": "What is the capital of France?"}]
    first = smol_engine.generate([smol_engine.chat_prompt(messages)], SamplingParams(temperature=0, max_tokens=24))[0]
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And of Italy?"}]
    ids = smol_engine.chat_prompt(messages)
    second = smol_engine.generate([ids], SamplingParams(temperature=0, max_tokens=24))[0]
    assert second.usage.cached_tokens >= len(first.prompt_token_ids)
    with torch.inference_mode():
        ref = smol_hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24)[0, len(ids):].tolist()
    eos = set(smol_engine.eos_ids)
    n = next((i + 1 for i, t in enumerate(ref) if t in eos), len(ref))
    assert second.choices[0].token_ids == ref[:n]
