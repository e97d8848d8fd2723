"""Probe: torch.compile (inductor, CPU, frozen weights) of a decode-only SmolLM2 step against Ember's eager step.

    .venv/bin/python bench/compile_probe.py [THREADS] [INDUCTOR_CACHE_DIR]

Not used by Ember: it records why the engine does not compile its step yet (docs/engine.md, issue 14). The
step is rebuilt as an nn.Module over the plain weights (inductor's oneDNN linear lowering needs frozen
constants, so Ember's prepacked weights cannot be passed in), the KV cache is mutated in place, and the rows'
count and the attended length are marked dynamic. Prints the cold compile time, the largest logit difference
to the eager step, the time of the first calls with new shapes, and median step times, eager vs compiled.
"""
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ember.models.attention import make_batch
from ember.models.llama import LlamaDecoder
from ember.models.loading import load_model, load_weights, read_json, resolve_folder


def rms(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


class Decode(torch.nn.Module):
    """Decode rows 0..T-1 of the cache, one token each: the step's tensors in, logits out."""

    def __init__(self, m: LlamaDecoder):
        super().__init__()

        def param(t):
            return torch.nn.Parameter(t.contiguous(), requires_grad=False)

        self.ws = torch.nn.ParameterList()
        for L in m.layers:
            for t in (L.ln1, L.wqkv.t(), L.wo.t(), L.ln2, L.wgu.t(), L.wdown.t()):
                self.ws.append(param(t))
        self.norm, self.head = param(m.norm), param(m.lm_head.t())
        self.n, self.H, self.KV, self.D, self.eps = m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.eps
        self.scale = m.scale

    def forward(self, x, cos, sin, kc, vc, widx, length):
        T, H, KV, D, eps = x.shape[0], self.H, self.KV, self.D, self.eps
        half, rep, nqk, n = D // 2, H // KV, (H + KV) * D, length.shape[0]
        for i in range(self.n):
            ln1, wqkv, wo, ln2, wgu, wdown = (self.ws[6 * i + j] for j in range(6))
            qkv = F.linear(rms(x, ln1, eps), wqkv)
            qk = qkv[:, :nqk].view(T, H + KV, D)
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[:, nqk:].view(T, KV, D)
            kc[i].view(-1, D).index_copy_(0, widx, k.reshape(T * KV, D))
            vc[i].view(-1, D).index_copy_(0, widx, v.reshape(T * KV, D))
            kk, vv = kc[i, :T, :, :n], vc[i, :T, :, :n]
            s = torch.matmul(q.reshape(T, KV, rep, D) * self.scale, kk.transpose(-1, -2))
            o = torch.matmul(torch.softmax(s, -1), vv).reshape(T, H * D)
            x = x + F.linear(o, wo)
            gu = F.linear(rms(x, ln2, eps), wgu)
            inter = gu.shape[1] // 2
            x = x + F.linear(F.silu(gu[:, :inter]) * gu[:, inter:], wdown)
        return F.linear(rms(x, self.norm, eps), self.head)


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = sys.argv[2] if len(sys.argv) > 2 else "/tmp/ember-inductor"
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    with torch.inference_mode():
        m = load_model("smollm2-135m-instruct", with_tokenizer=False).model
        folder = resolve_folder("smollm2-135m-instruct")
        mod = Decode(LlamaDecoder(read_json(folder / "config.json"), load_weights(folder))).eval()
        cache = m.make_cache(8, 300)
        for s in range(8):
            m.forward(make_batch([], [(s, 0, list(range(1, 101)))], [True]), cache)

        def step_args(n, ctx):
            b = make_batch([(s, ctx, 100 + s) for s in range(n)], [], [])
            cache.make_finite(b)
            heads = torch.arange(m.n_kv_heads)[None, :]
            widx = ((b.slots[:, None] * m.n_kv_heads + heads) * cache.max_seq_len + b.positions[:, None]).reshape(-1)
            a = (m.embed[b.tokens], m.cos[b.positions][:, None, :], m.sin[b.positions][:, None, :],
                 cache.k, cache.v, widx, torch.empty(ctx + 1))
            for i in (0, 1, 2, 5, 6):
                torch._dynamo.maybe_mark_dynamic(a[i], 0)
            return b, a

        b, a = step_args(1, 100)
        ref = m.forward(b, cache)
        comp = torch.compile(mod)
        t = time.perf_counter()
        out = comp(*step_args(1, 100)[1])
        print(f"compile {time.perf_counter() - t:.1f} s, max logit difference {(out - ref).abs().max().item():.2e}")
        t = time.perf_counter()
        comp(*step_args(1, 101)[1])
        comp(*step_args(4, 101)[1])
        print(f"first calls with new shapes {time.perf_counter() - t:.1f} s")
        res = {}
        for _ in range(3):
            for n in (1, 8):
                def eager(n=n):
                    m.forward(step_args(n, 100)[0], cache)

                def compiled(n=n):
                    comp(*step_args(n, 100)[1])

                for name, f in (("eager", eager), ("compiled", compiled)):
                    for _ in range(5):
                        c, w = time.thread_time(), time.perf_counter()
                        f()
                        res.setdefault((n, name), []).append(((time.thread_time() - c) * 1e3,
                                                              (time.perf_counter() - w) * 1e3))
        for (n, name), v in res.items():
            cpu, wall = statistics.median(x for x, _ in v), statistics.median(y for _, y in v)
            print(f"rows {n} {name:<9} cpu {cpu:.1f} ms  wall {wall:.1f} ms")


if __name__ == "__main__":
    main()
