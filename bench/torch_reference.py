"""The reference's train step and samplers, written in PyTorch from docs/sedd_reference.md, to time side by side.

    python bench/torch_reference.py [--steps=16] [--attention=sdpa|written] [--threads=2] [--length=256]
    python bench/torch_reference.py --sample=analytic|euler [--steps=128] [--repeats=2]

Issue 8's targets are ratios to the official PyTorch code on the same machine. This script lets a machine
measure that ratio without the official repository: the same network, loss and optimizer as the reference for
issue 8's configuration (tokens 1000 absorb, hidden 256, 4 heads, 4 blocks, cond 128, length 256, batch 8,
dropout 0.1, float32, AdamW with warm-up, gradient clipping at 1.0, EMA 0.9999), run eagerly as the reference
runs; with --sample, a full sampler run of the absorbing graph (§5: all-MASK start, --steps predictor steps
from t = 1 to 1e-5, the denoiser, exponential-race draws) with the network in eval mode under `torch.no_grad`,
as bench/sample.py times sedd-jax's. Attention is `torch.nn.functional.scaled_dot_product_attention` (the
official code calls flash-attn, which has no CPU kernel) or, with `--attention=written`, softmax(q k^T /
sqrt(d)) v written out. It prints the median
step (or sampler run) time, tokens/s, process CPU time and peak RSS, and for training torch's rate on the MLP's
input product (bench/train_step.py prints XLA's on the same shapes); nothing is asserted.

torch is not a dependency of sedd-jax: install it in a virtualenv of its own (`pip install torch numpy`) and
run this script with that virtualenv's Python. Nothing in sedd_jax imports it.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TOKENS, HIDDEN, HEADS, BLOCKS, COND, BATCH, DROPOUT = 1000, 256, 4, 4, 128, 8, 0.1
VOCAB = TOKENS + 1  # the absorbing state is the last token
NOISE_EPS, SAMPLING_EPS, SAMPLER_EPS = 1e-3, 1e-3, 1e-5  # log-linear schedule, training's t ~ U[eps, 1], samplers
LR, WARMUP, GRAD_CLIP, EMA_DECAY = 3e-4, 2500, 1.0, 0.9999


def total_noise_of(t):
    """The log-linear schedule's sigma_bar(t) (§3). t [B] -> [B]."""
    return -torch.log1p(-(1 - NOISE_EPS) * t)


def rate_noise_of(t):
    """The log-linear schedule's sigma(t) = d sigma_bar / dt (§3). t [B] -> [B]."""
    return (1 - NOISE_EPS) / (1 - (1 - NOISE_EPS) * t)


def expm1_of(total_noise):
    """e^sigma_bar - 1 as the reference computes it (§1.8). [B] -> [B]."""
    return torch.where(total_noise < 0.5, torch.expm1(total_noise), total_noise.exp() - 1)


class LayerNorm(nn.Module):
    """Weight-only LayerNorm in float32, eps 1e-5 (§1.4). x [B, L, H] -> [B, L, H]."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.layer_norm(x.float(), [x.shape[-1]]) * self.weight


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def rotate_half(u):
    first, second = u.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rotary_angles(length: int, head_dim: int):
    """cos, sin [1, L, 1, dh] of GPT-NeoX rotary embeddings, base 10000, halves duplicated (§1.3)."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(length).float(), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)[None, :, None, :]
    return angles.cos(), angles.sin()


class Block(nn.Module):
    """DDiT block with adaLN-zero modulation (§1.5). x [B, L, H] float32, c [B, C]."""

    def __init__(self, attention: str):
        super().__init__()
        self.attention = attention
        self.norm1, self.norm2 = LayerNorm(HIDDEN), LayerNorm(HIDDEN)
        self.attn_qkv = nn.Linear(HIDDEN, 3 * HIDDEN, bias=False)
        self.attn_out = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, 4 * HIDDEN), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * HIDDEN, HIDDEN))
        self.adaLN_modulation = nn.Linear(COND, 6 * HIDDEN)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x, c, cos, sin):
        b, length, _ = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c)[:, None].chunk(6, dim=2))
        qkv = self.attn_qkv(modulate(self.norm1(x), shift_msa, scale_msa))
        q, k, v = qkv.view(b, length, 3, HEADS, HIDDEN // HEADS).unbind(2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        q, k, v = (u.transpose(1, 2) for u in (q, k, v))  # [B, nh, L, dh]
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
        out = self.attn_out(out.transpose(1, 2).reshape(b, length, HIDDEN))
        x = x + gate_msa * self.dropout(out)
        return x + gate_mlp * self.dropout(self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class ScoreNetwork(nn.Module):
    """The SEDD network (§1): indices [B, L], sigma [B] -> log score [B, L, V]."""

    def __init__(self, attention: str):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(VOCAB, HIDDEN))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))
        self.sigma_map = nn.Sequential(nn.Linear(256, COND), nn.SiLU(), nn.Linear(COND, COND))
        self.blocks = nn.ModuleList(Block(attention) for _ in range(BLOCKS))
        self.norm_final = LayerNorm(HIDDEN)
        self.output = nn.Linear(HIDDEN, VOCAB)
        self.final_adaLN = nn.Linear(COND, 2 * HIDDEN)
        for layer in (self.output, self.final_adaLN):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, indices, sigma):
        x = self.embedding[indices]
        angles = sigma[:, None] * torch.exp(-math.log(10000) * torch.arange(128).float() / 128)
        c = F.silu(self.sigma_map(torch.cat((angles.cos(), angles.sin()), dim=-1)))
        cos, sin = rotary_angles(indices.shape[1], HIDDEN // HEADS)
        for block in self.blocks:
            x = block(x, c, cos, sin)
        shift, scale = self.final_adaLN(c)[:, None].chunk(2, dim=2)
        logits = self.output(modulate(self.norm_final(x), shift, scale))
        logits = logits - expm1_of(sigma).log()[:, None, None] - math.log(VOCAB - 1)
        return torch.scatter(logits, -1, indices[..., None], torch.zeros_like(logits[..., :1]))


def loss_fn(model, x0):
    """Score entropy of the absorbing graph under the log-linear noise (§2.2, §3, §4.1): [B] nats per sequence."""
    t = (1 - SAMPLING_EPS) * torch.rand(x0.shape[0]) + SAMPLING_EPS
    total_noise = total_noise_of(t)
    xt = torch.where(torch.rand(x0.shape) < 1 - torch.exp(-total_noise)[:, None], TOKENS, x0)
    log_score = model(xt, total_noise)
    ratio = 1 / expm1_of(total_noise)[:, None]
    entropy = (log_score[..., :-1].exp().sum(-1) - ratio * torch.gather(log_score, -1, x0[..., None])[..., 0]
               + ratio * (ratio.log() - 1))
    return (rate_noise_of(t)[:, None] * torch.where(xt == TOKENS, entropy, torch.zeros_like(entropy))).sum(-1)


def sample_categorical(probs):
    """argmax_j probs_j / E_j with E ~ Exp(1), the reference's "hard" draw (§5.5). probs [..., V] -> [...]."""
    return (probs / (1e-10 - (torch.rand_like(probs) + 1e-10).log())).argmax(-1)


def tweedie_probs(score, x, delta):
    """staggered_score(s, delta) * transp_transition(x, delta) of the absorbing graph (§2.2, §5.3).
    score [B, L, V], x [B, L], delta [B] -> [B, L, V]."""
    per_position, per_entry = delta[:, None], delta[:, None, None]
    staggered = score * per_entry.exp()
    staggered[..., -1] = score[..., -1] + (1 - per_position.exp()) * score[..., :-1].sum(-1)
    is_mask = (x == TOKENS)[..., None]
    transition = torch.where(is_mask, 1 - (-per_entry).exp(), torch.zeros_like(score))
    transition[..., -1] = torch.where(is_mask[..., 0], 1.0, 0.0)
    transition = transition + (-per_entry).exp() * F.one_hot(x, VOCAB) * ~is_mask
    return staggered * transition


def sample(model, predictor: str, steps: int, length: int):
    """One sampler run (§5.2-5.4): [B, L] tokens from an all-MASK start."""
    x = torch.full((BATCH, length), TOKENS)
    timesteps = torch.linspace(1, SAMPLER_EPS, steps + 1)
    dt = (1 - SAMPLER_EPS) / steps
    for i in range(steps):
        t = timesteps[i].expand(BATCH)
        sigma_bar = total_noise_of(t)
        score = model(x, sigma_bar).exp()
        if predictor == "analytic":
            probs = tweedie_probs(score, x, sigma_bar - total_noise_of(t - dt))
        else:
            is_mask = (x == TOKENS)[..., None]
            rate = torch.where(is_mask, score, torch.zeros_like(score))
            rate[..., -1] = torch.where(is_mask[..., 0], -score[..., :-1].sum(-1), 0.0)
            probs = F.one_hot(x, VOCAB) + dt * rate_noise_of(t)[:, None, None] * rate
        x = sample_categorical(probs)
    sigma_bar = total_noise_of(timesteps[-1].expand(BATCH))
    return sample_categorical(tweedie_probs(model(x, sigma_bar).exp(), x, sigma_bar)[..., :-1])


def product_rate_line(rows: int) -> str:
    """torch's rate on the MLP's input product, `F.linear` of `[rows, HIDDEN]` by a `[4 HIDDEN, HIDDEN]` weight
    in float32 (median of 20 calls): the library under the step bounds its speed, so ratios to sedd-jax depend on
    it (bench/train_step.py prints XLA's rate on the same product; bench/README.md)."""
    x, weight = torch.ones(rows, HIDDEN), torch.ones(4 * HIDDEN, HIDDEN)
    times = []
    for _ in range(21):
        start = time.perf_counter()
        F.linear(x, weight)
        times.append(time.perf_counter() - start)
    rate = 2 * rows * HIDDEN * 4 * HIDDEN / np.median(times[1:]) / 1e9  # the first call warms up
    blas = "MKL" if torch.backends.mkl.is_available() else "no MKL"
    return (f"one product [{rows}, {HIDDEN}] x [{HIDDEN}, {4 * HIDDEN}] float32: {rate:,.1f} GFLOP/s (torch, {blas}, "
            "median of 20 calls)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None,
                   help="timed train steps after 2 warm-up steps (default 16), or predictor steps with --sample (128)")
    p.add_argument("--sample", choices=("analytic", "euler"), default=None, help="time a sampler instead")
    p.add_argument("--repeats", type=int, default=2, help="timed sampler runs (after one warm-up run)")
    p.add_argument("--attention", choices=("sdpa", "written"), default="sdpa")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own, one per core)")
    p.add_argument("--length", type=int, default=256)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.sample:
        return time_sampler(args)
    args.steps = args.steps or 16
    model = ScoreNetwork(args.attention).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    ema = [param.detach().clone() for param in model.parameters()]
    x0 = torch.from_numpy(np.random.default_rng(0).integers(0, TOKENS, (BATCH, args.length)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, attention {args.attention}, "
          f"batch {BATCH} x length {args.length}")
    print(product_rate_line(BATCH * args.length))

    wall, cpu = [], []
    for step in range(args.steps + 2):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = loss_fn(model, x0).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = LR * min((step + 1) / WARMUP, 1)
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        with torch.no_grad():
            for average, param in zip(ema, model.parameters()):
                average.mul_(EMA_DECAY).add_(param, alpha=1 - EMA_DECAY)
        if step >= 2:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    median = float(np.median(wall))
    print(f"train step median {median * 1e3:.1f} ms (min {min(wall) * 1e3:.1f}, max {max(wall) * 1e3:.1f}, "
          f"{args.steps} steps) | {BATCH * args.length / median:,.0f} tokens/s | process CPU time "
          f"{np.median(cpu) * 1e3:.1f} ms per step | peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB | loss {loss.item():.2f}")


def time_sampler(args):
    """Times --repeats sampler runs after one warm-up run and prints their median."""
    steps = args.steps or 128
    model = ScoreNetwork(args.attention).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, attention {args.attention}, "
          f"batch {BATCH} x length {args.length}, {args.sample} sampler, {steps} steps + denoiser")
    wall, cpu = [], []
    with torch.no_grad():
        for run in range(args.repeats + 1):
            start, start_cpu = time.perf_counter(), time.process_time()
            tokens = sample(model, args.sample, steps, args.length)
            if run:
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
    assert 0 <= int(tokens.min()) and int(tokens.max()) < TOKENS, "the denoiser left a MASK"
    median = float(np.median(wall))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"sampler run median {median:.2f} s ({median / (steps + 1) * 1e3:.1f} ms per network evaluation; runs "
          f"{', '.join(f'{w:.2f}' for w in wall)} s) | {BATCH * args.length / median:,.0f} tokens/s | process CPU "
          f"time {np.median(cpu):.2f} s per run | peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
