"""PyTorch twin of the upcycling recipe's toy model, for a side-by-side training-speed comparison.

The model is the one `recipes/upcycle-toy.json` trains (docs/recipes.md#the-bundled-toy-recipe):
byte vocabulary 256, d_model 64, context 64, learned positions, 3 parallel blocks
(u = RMSNorm(x); y = x + Attn(u) + FFN(u)), 2-head causal attention without RoPE, and either the
dense SwiGLU FFN (hidden 128) of the seed or the merged MoE of the BTX phase (4 SwiGLU experts of
hidden 128, softmax router, top-2, renormalised, switch balance loss 0.01). AdamW (betas 0.9/0.95,
weight decay 0.1), gradient clipping at 1, batch 32 x 64 tokens, random bytes.

It prints training tokens/s (median over timed steps) for each model. Compare with
`moelab train <spec> --backend moelab-cpu` on the same machine: scripts/bench-upcycle-speed.mjs runs both, interleaved.
This script is not part of the tests (there is no PyTorch on CI).

  /usr/bin/python3 packages/upcycle/scripts/torch_toy_lm.py --threads 2 --steps 30
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / (D // self.heads) ** 0.5
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        y = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class SwiGLU(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.w1 = nn.Linear(d, h, bias=False)
        self.w3 = nn.Linear(d, h, bias=False)
        self.w2 = nn.Linear(h, d, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TopKMoE(nn.Module):
    """Softmax router, top-k renormalised, per-expert loop over the routed tokens (the usual idiom)."""

    def __init__(self, d, h, experts, k, balance=0.01):
        super().__init__()
        self.router = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d, h) for _ in range(experts))
        self.k = k
        self.balance = balance

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = self.router(x).float().softmax(-1)
        gate, idx = probs.topk(self.k, dim=-1)
        gate = gate / gate.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = (idx == e).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            out.index_add_(0, token, expert(x[token]) * gate[token, slot, None])
        E = len(self.experts)
        frac = F.one_hot(idx, E).float().sum(1).mean(0) / self.k
        aux = self.balance * E * (frac * probs.mean(0)).sum()
        return out.view(shape), aux


class Block(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.norm = RMSNorm(d)
        self.attn = Attention(d, heads)
        self.ffn = ffn

    def forward(self, x):
        u = self.norm(x)
        f = self.ffn(u)
        aux = 0.0
        if isinstance(f, tuple):
            f, aux = f
        return x + self.attn(u) + f, aux


class ToyLM(nn.Module):
    def __init__(self, moe, vocab=256, d=64, ctx=64, layers=3, heads=2, hidden=128, experts=4, k=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        make = (lambda: TopKMoE(d, hidden, experts, k)) if moe else (lambda: SwiGLU(d, hidden))
        self.blocks = nn.ModuleList(Block(d, heads, make()) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1]))
        aux = 0.0
        for b in self.blocks:
            x, a = b(x)
            aux = aux + a
        return self.head(self.norm(x)), aux


def tokens_per_sec(moe, steps, warmup, batch, seq):
    torch.manual_seed(0)
    model = ToyLM(moe)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.randint(0, 256, (steps + warmup, batch, seq + 1))
    times = []
    for i in range(steps + warmup):
        t0 = time.perf_counter()
        x, y = data[i, :, :-1], data[i, :, 1:]
        logits, aux = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1)) + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch * seq / statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = {}
    for name, moe in (("dense", False), ("btx-moe", True)):
        rows[name] = tokens_per_sec(moe, a.steps, a.warmup, a.batch, a.seq)
        print(f"pytorch {torch.__version__} {name:8s} {rows[name]:10.0f} tokens/s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": a.threads, "tokensPerSec": rows}, f, indent=1)


if __name__ == "__main__":
    main()
