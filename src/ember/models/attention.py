"""Preallocated per-slot KV cache and the attention over it, shared by every decoder family.

    engine = Engine.load("smollm2-135m-instruct", max_slots=32, max_seq_len=2048)   # model.make_cache(32, 2048)

The model owns its attention and cache layout (`decoder.make_cache`, `decoder.forward(StepBatch, cache)`);
the engine only decides which tokens go into a step (`make_batch`) and which slot each sequence holds.

Layout: keys and values are one tensor each, [layers, slots, kv_heads, max_seq_len, head_dim]. A running
sequence owns one slot; its length is the number of cached positions. Nothing is ever re-padded or copied
between steps: a step writes its new K/V at (slot, position) and attends over a view of the cache.
The tensors come from `torch.empty`, so pages that no sequence has reached are never touched and stay out
of resident memory (32 slots x 2048 tokens of SmolLM2 reserve 3 GB of address space, not of RAM).
"""

from dataclasses import dataclass

import torch

from ember.models import cpu_kernels


@dataclass
class StepBatch:
    """The new tokens of one forward step, flat: decode tokens first (one per row), then prefill chunks."""

    tokens: torch.Tensor  # [T] token ids
    positions: torch.Tensor  # [T] position of each token in its sequence
    slots: torch.Tensor  # [T] cache slot of each token
    n_decode: int  # tokens[:n_decode] are single decode tokens of distinct slots
    prefills: list[tuple[int, int, int, int]]  # (slot, start position, length, offset into tokens)
    logit_index: torch.Tensor  # rows of the flat batch whose logits the caller wants
    # Decode attention runs over slots [0, hi) and positions [0, lmax) with an additive length mask.
    hi: int = 0
    lmax: int = 0
    decode_bias: torch.Tensor | None = None
    decode_rows: torch.Tensor | None = None  # slots of the decode tokens, None when they are 0..hi-1 in order
    write_index: torch.Tensor | None = None  # [T*KV] rows of the flattened cache that the step writes
    decode_lengths: torch.Tensor | None = None  # [n_decode] positions each decode row attends to (C kernel)


def make_batch(decode: list[tuple[int, int, int]], prefill: list[tuple[int, int, list[int]]],
               want_prefill_logits: list[bool]) -> StepBatch:
    """decode: (slot, position, token); prefill: (slot, start, tokens); logits for every decode row and the
    last token of each prefill chunk flagged in want_prefill_logits."""
    toks, pos, slots, logit_rows, prefills = [], [], [], [], []
    for i, (s, p, t) in enumerate(decode):
        toks.append(t)
        pos.append(p)
        slots.append(s)
        logit_rows.append(i)
    for (s, start, chunk), want in zip(prefill, want_prefill_logits):
        off = len(toks)
        toks.extend(chunk)
        pos.extend(range(start, start + len(chunk)))
        slots.extend([s] * len(chunk))
        prefills.append((s, start, len(chunk), off))
        if want:
            logit_rows.append(off + len(chunk) - 1)
    b = StepBatch(torch.tensor(toks), torch.tensor(pos), torch.tensor(slots), len(decode), prefills,
                  torch.tensor(logit_rows, dtype=torch.long))
    if decode:
        dslots = [d[0] for d in decode]
        b.hi = max(dslots) + 1
        lengths = torch.zeros(b.hi, dtype=torch.long)
        # Rows of idle slots attend to position 0 only, so their (discarded) softmax stays finite.
        lengths[:] = 1
        for s, p, _ in decode:
            lengths[s] = p + 1
        b.lmax = int(lengths.max())
        if int(lengths.min()) < b.lmax:  # rows of equal length (one stream, always) need no mask
            bias = torch.zeros(b.hi, b.lmax)
            bias.masked_fill_(torch.arange(b.lmax)[None, :] >= lengths[:, None], float("-inf"))
            b.decode_bias = bias[:, None, None, :]
        if dslots != list(range(b.hi)):
            b.decode_rows = torch.tensor(dslots)
    return b


class KVCache:
    def __init__(self, n_layers: int, n_slots: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32):
        shape = (n_layers, n_slots, n_kv_heads, max_seq_len, head_dim)
        self.k = torch.empty(shape, dtype=dtype)
        self.v = torch.empty(shape, dtype=dtype)
        self.n_slots, self.max_seq_len = n_slots, max_seq_len
        # Per slot: positions [0, finite[s]) hold finite values (written by some sequence, or zeroed).
        self.finite = [0] * n_slots

    def make_finite(self, b: StepBatch) -> None:
        """Decode attention reads positions [0, lmax) of slots [0, hi) and masks the unused ones with zero
        weight, but 0 * NaN is NaN: memory from `torch.empty` that no sequence ever wrote must be zeroed
        before it is read. Only the never-written tail is touched, once, as lengths grow."""
        for slot, start, n, _ in b.prefills:
            self.finite[slot] = max(self.finite[slot], start + n)
        nd = b.n_decode
        for slot, pos in zip(b.slots[:nd].tolist(), b.positions[:nd].tolist()):
            self.finite[slot] = max(self.finite[slot], pos + 1)
        for slot in range(b.hi):
            if self.finite[slot] < b.lmax:
                # 64 positions ahead: one small zero_ per slot every 64 steps instead of every step.
                end = min(self.max_seq_len, b.lmax + 64)
                self.k[:, slot, :, self.finite[slot] : end].zero_()
                self.v[:, slot, :, self.finite[slot] : end].zero_()
                self.finite[slot] = end

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Beam search and n>1 forks: make slot dst hold the first `length` positions of slot src."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]
        self.finite[dst] = max(self.finite[dst], length)

    def reorder(self, slots: list[int], sources: list[int], length: int) -> None:
        """Beam search: slot slots[i] takes the contents of slot sources[i] (all read before any write)."""
        idx_src, idx_dst = torch.tensor(sources), torch.tensor(slots)
        self.k[:, idx_dst, :, :length] = self.k[:, idx_src, :, :length].clone()
        self.v[:, idx_dst, :, :length] = self.v[:, idx_src, :, :length].clone()

    @staticmethod
    def _attend_decode(kc: torch.Tensor, vc: torch.Tensor, qd: torch.Tensor, b: StepBatch) -> torch.Tensor:
        """qd [hi, KV, rep, D] against slots [0, hi) of one layer's cache -> [hi, KV, rep, D]."""
        kk, vv = kc[: b.hi, :, : b.lmax], vc[: b.hi, :, : b.lmax]  # views, no copy
        s = torch.matmul(qd, kk.transpose(-1, -2))  # [hi, KV, rep, L]
        if b.decode_bias is not None:  # None: every row attends to all lmax positions
            s += b.decode_bias
        return torch.matmul(torch.softmax(s, dim=-1), vv)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: StepBatch,
               scale: float) -> torch.Tensor:
        """q [T, H, D], k/v [T, KV, D] for the step's tokens -> attention output [T, H*D].

        Grouped-query attention without repeating K/V: the H query heads are viewed as [KV, H/KV] so
        each group multiplies against its shared key head through broadcasting."""
        kc, vc = self.k[layer], self.v[layer]
        T, H, D = q.shape
        KV = k.shape[1]
        if layer == 0:
            self.make_finite(b)
        if b.write_index is None:
            # Row (slot, head, pos) of the cache viewed as [slots*KV*S, D]; index_copy_ on that view is
            # several times faster than advanced-index assignment, and the index serves every layer.
            S = self.max_seq_len
            heads = torch.arange(KV)
            b.write_index = ((b.slots[:, None] * KV + heads[None, :]) * S + b.positions[:, None]).reshape(-1)
        kc.view(-1, D).index_copy_(0, b.write_index, k.reshape(T * KV, D))
        vc.view(-1, D).index_copy_(0, b.write_index, v.reshape(T * KV, D))
        nd = b.n_decode
        od = None
        if nd and kc.dtype == torch.float32 and cpu_kernels.library() is not None:
            # One C call per layer for the decode rows, each over its own slot's length, read in place: no
            # views, mask or softmax temporaries (models/cpu_kernels.c; a one-row step ran ~10 torch ops here).
            if b.decode_lengths is None:
                b.decode_lengths = b.positions[:nd] + 1
            od = cpu_kernels.decode_attention(q[:nd], kc, vc, b.slots[:nd], b.decode_lengths, scale)
            if nd == T:
                return od
        # With a power-of-two head_dim the scale is exact, so scaling q (smaller than the scores) is free;
        # Llama folds it into its q weights (scale 1.0 here).
        if scale != 1.0:
            q = q * scale
        rep = H // KV
        if od is None and nd == T and b.decode_rows is None:  # decode only, slots 0..T-1: no output buffer
            return self._attend_decode(kc, vc, q.reshape(T, KV, rep, D), b).reshape(T, H * D)
        out = torch.empty(T, H * D, dtype=q.dtype)
        if od is not None:
            out[:nd] = od
        elif nd:
            qd = q[:nd].view(nd, KV, rep, D)
            if b.decode_rows is not None:  # scatter into a dense [hi] batch; idle rows compute garbage
                qf = torch.zeros(b.hi, KV, rep, D, dtype=q.dtype)
                qf[b.decode_rows] = qd
                qd = qf
            o = self._attend_decode(kc, vc, qd, b)
            if b.decode_rows is not None:
                o = o[b.decode_rows]
            out[:nd] = o.reshape(nd, H * D)
        for slot, start, n, off in b.prefills:
            L = start + n
            qp = q[off : off + n].view(n, KV, rep, D).permute(1, 2, 0, 3)  # [KV, rep, n, D]
            kk, vv = kc[slot, :, :L].unsqueeze(1), vc[slot, :, :L].unsqueeze(1)  # [KV, 1, L, D]
            s = torch.matmul(qp, kk.transpose(-1, -2))
            causal = torch.arange(L)[None, :] > torch.arange(start, L)[:, None]
            s.masked_fill_(causal, float("-inf"))
            o = torch.matmul(torch.softmax(s, dim=-1), vv)  # [KV, rep, n, D]
            out[off : off + n] = o.permute(2, 0, 1, 3).reshape(n, H * D)
        return out
