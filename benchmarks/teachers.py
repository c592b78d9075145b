"""Teacher cost against this CPU's peak, from the committed teacher records (third step of ``make bench``).

The numbers are the ones each teacher run measured while it ran (``python -m reimpl.teachers.run ...``, the command
is in each record and in the table); nothing is re-timed here, so the table rebuilds on a fresh clone in seconds.
Achieved FLOP/s are estimated from the tokens processed and the LLM's matmul sizes:

* forward FLOPs per token = 2 x (weights of the decoder layers run: q, k, v, o, gate, up, down) + the attention
  products (4 x positions x width per layer, negligible at these prompt lengths);
* training (E4SRec): forward + the backward through every layer (the trainable ``in_proj`` sits below the first
  layer, so activation gradients flow through the whole stack; the frozen weights need no weight gradient):
  ~2 x forward; LoRA's own products are < 1 % and left out;
* export / encoding: forward only.

SmolLM2-135M-Instruct (``config.json`` of the checkpoint the GGUF was made from): hidden 576, intermediate 1,536,
9 attention heads with 3 key/value heads of width 64, 30 layers. Peak: 2 Zen 4 cores at ~2.6 GHz, AVX-512 as two
256-bit FMA pipes: ~85 GFLOP/s fp32 per core; the bf16 dot products (``vdpbf16ps``) double it.

Usage: ``python -m benchmarks.teachers [--out reports/bench_teachers.md]``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from reimpl.paths import REPORTS, ROOT

HIDDEN, INTER, KV = 576, 1536, 3 * 64
LAYER_WEIGHTS = HIDDEN * HIDDEN * 2 + HIDDEN * KV * 2 + 3 * HIDDEN * INTER   # q, o + k, v + gate, up, down
N_LAYERS = 30
PEAK_FP32 = 85.0   # GFLOP/s per core


def fwd_flops_per_token(layers: int) -> float:
    return 2.0 * LAYER_WEIGHTS * layers


def _cmd(c: str) -> str:  # runs started as a script path recorded argv[0] as that path
    return re.sub(r"^\S*reimpl/teachers/run\.py", "python -m reimpl.teachers.run", c)


def rows(folder: Path = ROOT / "results" / "teachers") -> list[dict]:
    out = []
    for p in sorted(folder.rglob("*.json")):
        r = json.loads(p.read_text())
        threads = r.get("env", {}).get("threads", 1)
        name, cmd = r["teacher"], _cmd(r.get("train_command") or r.get("command", ""))
        if r["method"] == "e4srec":
            layers = r["config"].get("llm_layers") or N_LAYERS
            t = r["train"]
            if t.get("train_tokens_per_s"):
                tps = t["train_tokens_per_s"]
                out.append({"teacher": name, "phase": f"train ({t['rows']} rows, bf16 autocast)", "threads": threads,
                            "tokens_per_s": tps, "rows_per_s": t.get("rows_per_s"), "layers": layers,
                            "gflops": tps * 2 * fwd_flops_per_token(layers) / 1e9, "command": cmd})
            if "export" in r:
                e = r["export"]
                rps = e["rows"] / e["export_s"]
                # tokens per row as in training (the same prompt layout: prefix, one slot per item, suffix)
                tpr = t["train_tokens_per_s"] / t["rows_per_s"] if t.get("train_tokens_per_s") else None
                tps = None if tpr is None else rps * tpr
                out.append({"teacher": name, "phase": f"export ({e['rows']} rows, one forward per row)",
                            "threads": threads, "tokens_per_s": tps, "rows_per_s": rps, "layers": layers,
                            "gflops": None if tps is None else tps * fwd_flops_per_token(layers) / 1e9,
                            "command": _cmd(r.get("command", ""))})
        elif r["method"] == "dense" and isinstance(r.get("encoder", {}).get("encode"), dict):
            e = r["encoder"]["encode"]
            if e.get("tokens_per_s") and e.get("seconds", 0) > 1:
                out.append({"teacher": name, "phase": f"encode {e['texts']} item texts (export of the item tower)",
                            "threads": threads, "tokens_per_s": e["tokens_per_s"], "rows_per_s": None,
                            "layers": N_LAYERS, "gflops": e["tokens_per_s"] * fwd_flops_per_token(N_LAYERS) / 1e9,
                            "command": cmd})
        elif r["method"] == "ilora" and r.get("train", {}).get("chunks"):
            # chunks that counted their tokens; training = forward + the activation backward through every layer
            ch = [c for c in r["train"]["chunks"] if c.get("tokens")]
            if ch:
                secs = sum(c["seconds"] for c in ch)
                tps = sum(c["tokens"] for c in ch) / secs
                layers = r["config"].get("llm_layers") or N_LAYERS
                rows_done = sum(c["batches"] for c in ch) * r["config"]["batch_size"]
                out.append({"teacher": name, "phase": f"train ({rows_done} of {r['train']['rows']} rows timed with "
                            f"tokens{'' if r['train'].get('finished') else ', training unfinished'}, bf16 autocast, "
                            "answer-only LM head)", "threads": ch[-1].get("threads", threads),
                            "tokens_per_s": tps, "rows_per_s": rows_done / secs, "layers": layers,
                            "gflops": tps * 2 * fwd_flops_per_token(layers) / 1e9, "command": cmd})
        elif r["method"] == "llamarec" and r.get("eval_tokens_per_s"):
            tps = r["eval_tokens_per_s"]
            out.append({"teacher": name, "phase": "rerank (two forwards per row)", "threads": threads,
                        "tokens_per_s": tps, "rows_per_s": r.get("export_rows_per_s"), "layers": N_LAYERS,
                        "gflops": tps * fwd_flops_per_token(N_LAYERS) / 1e9, "command": cmd})
    return out


def _f(x, nd: int) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def render(table: list[dict]) -> str:
    lines = ["# Teacher cost against this CPU's peak", "",
             "Generated by `python -m benchmarks.teachers` (third step of `make bench`) from the committed records in "
             "`results/teachers/` (method: the module docstring). Tokens/s and rows/s were measured by the teacher "
             "runs themselves, on the shared 2-core machine; GFLOP/s are estimated from the tokens and SmolLM2's "
             "matmul sizes. Peak: ~85 GFLOP/s fp32 per core, ~2x that through the bf16 dot products.", "",
             "| teacher | phase | threads | decoder layers | tokens/s | rows/s | est. GFLOP/s "
             "| % of fp32 peak (threads x 85) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        pct = None if r["gflops"] is None else 100 * r["gflops"] / (PEAK_FP32 * r["threads"])
        lines.append(f"| {r['teacher']} | {r['phase']} | {r['threads']} | {r['layers']} | {_f(r['tokens_per_s'], 0)} "
                     f"| {_f(r['rows_per_s'], 1)} | {_f(r['gflops'], 1)} | {_f(pct, 0)} |")
    lines += ["", "Commands (as recorded):", ""]
    lines += sorted({f"* `{r['teacher']}`: `{r['command']}`" for r in table})
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.teachers")
    ap.add_argument("--out", default=str(REPORTS / "bench_teachers.md"))
    a = ap.parse_args(argv)
    Path(a.out).write_text(render(rows()))
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
