"""Speculative decoding bench: acceptance rate and speed-up of n-gram drafting vs plain decoding, in-process,
on chat, code and summarisation-like prompts (summaries and code edits copy from the prompt, which is where
prompt lookup pays; free chat finds few matches).

    .venv/bin/python bench/spec_bench.py                          # fp32, k=4, 128 tokens, one stream
    .venv/bin/python bench/spec_bench.py --quantize int8 --num-speculative-tokens 6 --concurrency 4

Both engines share the loaded weights; each prompt set runs plain then speculative then plain again ...
for --rounds rounds (greedy, EOS ignored, --max-tokens each) and the medians are printed. Greedy output is
checked to be identical on both sides.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ARTICLE = ("The city council met on Tuesday to discuss the new bicycle lanes on Main Street. After two hours of "
           "debate, the council voted seven to two to build the lanes next spring. The project will cost 2.4 "
           "million dollars, paid by a state grant. Shop owners worried about losing parking spaces, so the "
           "council promised forty new spaces behind the library. Construction starts in April and should end "
           "by September.")
CODE = ('def load_users(path):\n    users = []\n    with open(path) as f:\n        for line in f:\n'
        '            name, age = line.strip().split(",")\n            users.append({"name": name, "age": int(age)})\n'
        '    return users\n')
SETS = {
    "chat": ["What are three tips for sleeping better?", "Tell me a short story about a robot who learns to paint.",
             "Why is the sky blue?", "How do I make a good cup of coffee?"],
    "code": [f"Add type hints and a docstring to this function:\n\n{CODE}",
             f"Rename the variable `users` to `people` in this code:\n\n{CODE}",
             f"Rewrite this function to skip empty lines:\n\n{CODE}",
             "Write a Python class `Stack` with push, pop and peek methods, then a class `Queue` with the same "
             "methods."],
    "summarise": [f"{ARTICLE}\n\nSummarize the text above in two sentences.",
                  f"{ARTICLE}\n\nList the key facts of the text above, one per line.",
                  f"{ARTICLE}\n\nRepeat the text above, then give it a title.",
                  f"{ARTICLE}\n\nWhat did the council decide, and when does construction start?"],
}


def run(engine, prompts, params, concurrency: int) -> tuple[float, int, list]:
    t0, outs = time.perf_counter(), []
    for i in range(0, len(prompts), concurrency):
        outs += [c.choices[0].token_ids for c in engine.generate(prompts[i : i + concurrency], params)]
    return time.perf_counter() - t0, sum(len(o) for o in outs), outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--quantize", choices=("int8",))
    ap.add_argument("--num-speculative-tokens", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=1, help="Prompts generated together.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sets", default=",".join(SETS))
    args = ap.parse_args()

    from ember.engine.engine import Engine
    from ember.engine.sampling import SamplingParams
    from ember.engine.speculative import SpecConfig

    plain = Engine.load(args.model, quantize=args.quantize, max_slots=max(args.concurrency, 1), max_seq_len=1024)
    spec = Engine(plain.loaded, max_slots=max(args.concurrency, 1), max_seq_len=1024,
                  speculative=SpecConfig("ngram", num_tokens=args.num_speculative_tokens, max_batch=32))
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    plain.generate(["warm up"], SamplingParams(max_tokens=4))
    spec.generate(["warm up"], SamplingParams(max_tokens=4))
    print(f"{args.model} {args.quantize or 'fp32'}, k={args.num_speculative_tokens}, {args.max_tokens} tokens, "
          f"concurrency {args.concurrency}, median of {args.rounds} round(s)")
    print(f"{'set':10} {'plain tok/s':>12} {'spec tok/s':>11} {'speed-up':>9} {'accepted':>9} {'tok/step':>9} same")
    for name in args.sets.split(","):
        prompts = [plain.chat_prompt([{"role": "user", "content": p}]) for p in SETS[name]]
        tp, ts, same = [], [], True
        s0 = (spec.spec_stats.num_draft_tokens, spec.spec_stats.num_accepted_tokens, spec.steps,
              spec.generated_tokens)
        for _ in range(args.rounds):
            dt, n, out_p = run(plain, prompts, params, args.concurrency)
            tp.append(n / dt)
            dt, n, out_s = run(spec, prompts, params, args.concurrency)
            ts.append(n / dt)
            same &= out_p == out_s
        drafted = spec.spec_stats.num_draft_tokens - s0[0]
        acc = (spec.spec_stats.num_accepted_tokens - s0[1]) / drafted if drafted else 0.0
        per_step = (spec.generated_tokens - s0[3]) / max(spec.steps - s0[2], 1)
        mp, ms = statistics.median(tp), statistics.median(ts)
        print(f"{name:10} {mp:>12.1f} {ms:>11.1f} {ms / mp:>8.2f}x {acc:>9.0%} {per_step:>9.2f} {same}", flush=True)
    plain.close()
    spec.close()


if __name__ == "__main__":
    main()
