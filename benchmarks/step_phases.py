"""Where an undistilled engine step goes, by phase, and what single ops cost on this CPU (session 15 notes).

Real LastFM from ``make bench``'s working directory (``benchmarks.epochs.prepare``), one thread, CPU time
(``time.process_time``), median over steps 10-79 of one epoch's batches. Phases: row gather, negatives, forward
to the representation, the two head columns and the BCE, backward, Adam. Then single ops on SASRec's
``[256, 10, 64]`` activations (dropout, its ``bernoulli_`` / ``rand_like`` draws, the ``[2560, 64] x [64, 64]``
product, ``LayerNorm``) and a scalar add (dispatch alone).

Usage: ``python -m benchmarks.step_phases [--models SASRec,GRU,Caser]``; prints a table (not timed in tests).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

PHASES = ("gather", "negatives", "forward", "head", "backward", "adam")


def phases(model: str, steps: int = 80, skip: int = 10) -> dict[str, float]:
    """Median ms per phase of ``model``'s undistilled engine step (fixed mode's maths, seed 1)."""
    from benchmarks.epochs import prepare
    from reimpl.dllm2rec.config import DLLM2RecConfig
    from reimpl.dllm2rec.train import load_data
    from reimpl.engine import forward, losses
    from reimpl.engine import train as etrain
    from reimpl.engine.sampling import sample_negatives

    data = load_data(prepare(), "lastfm", need_rank=False, need_emb=False)
    s = DLLM2RecConfig(model_name=model, data="lastfm", mode="fixed", epoch=1, seed=1, lam=0.0, ed_weight=0.0,
                       alpha=0.0)
    sess = etrain.Session(etrain.EngineConfig(s), data)
    out = {k: [] for k in PHASES}
    pt = time.process_time
    for i, rows in enumerate(torch.as_tensor(sess.batches.epoch())[:steps]):
        t = [pt()]
        b_seq, b_len, b_t = sess.seq[rows], sess.lens[rows], sess.nxt[rows]
        t.append(pt())
        neg = sample_negatives(b_seq, b_t, data.item_num, sess.gen)
        t.append(pt())
        r = forward.representation(sess.model, b_seq, b_len, None)
        t.append(pt())
        o = forward.head_at(sess.model, r, torch.cat([b_t.view(-1, 1), neg], 1))
        loss = losses.bce_at(o[:, :1], o[:, 1:])
        t.append(pt())
        sess.opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(pt())
        sess.opt.step()
        t.append(pt())
        if i >= skip:
            for k, a, b in zip(PHASES, t, t[1:]):
                out[k].append(b - a)
    return {k: 1e3 * statistics.median(v) for k, v in out.items()}


def op_costs(n: int = 2000) -> dict[str, float]:
    """Mean µs per call of a few single ops on ``[256, 10, 64]`` (after 50 warm-up calls)."""
    def us(f, reps=n):
        for _ in range(50):
            f()
        t = time.process_time()
        for _ in range(reps):
            f()
        return (time.process_time() - t) / reps * 1e6

    a, x, y, w = torch.randn(1), torch.randn(256, 10, 64), torch.randn(256, 10, 64), torch.randn(64, 64)
    ln, drop = torch.nn.LayerNorm(64), torch.nn.Dropout(0.1)
    return {"scalar add": us(lambda: a + a), "add [256, 10, 64]": us(lambda: x + y),
            "linear [2560, 64] x [64, 64]": us(lambda: torch.nn.functional.linear(x, w)),
            "LayerNorm [256, 10, 64]": us(lambda: ln(x)), "Dropout(0.1) [256, 10, 64]": us(lambda: drop(x), 500),
            "bernoulli_ [256, 10, 64]": us(lambda: torch.empty_like(x).bernoulli_(0.9), 500),
            "rand_like [256, 10, 64]": us(lambda: torch.rand_like(x), 500)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.step_phases")
    ap.add_argument("--models", default="SASRec,GRU,Caser")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| student | " + " | ".join(PHASES) + " | sum |\n|" + " --- |" * (len(PHASES) + 2))
    for m in a.models.split(","):
        p = phases(m)
        print(f"| {m} | " + " | ".join(f"{p[k]:.2f}" for k in PHASES) + f" | {sum(p.values()):.2f} |", flush=True)
    print("\n| op | µs per call |\n| --- | --- |")
    for k, v in op_costs().items():
        print(f"| {k} | {v:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
