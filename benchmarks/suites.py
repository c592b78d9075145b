"""Benchmark registry: each entry pairs a reference-side and a reimpl-side setup on identical inputs.

A setup builds its inputs (not timed) and returns the zero-argument callable that is timed.
The setups live in one module per system: benchmarks/bench_dllm2rec.py, benchmarks/bench_ilora.py
(their docstrings say exactly what is built and timed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from benchmarks import bench_dllm2rec as D
from benchmarks import bench_ilora as L


@dataclass(frozen=True)
class Benchmark:
    what: str
    reference: Callable[[], Callable[[], object]]
    reimpl: Callable[[], Callable[[], object]]
    goal: float | None = None      # required speed-up (reference time / reimpl time)
    repeat: int | None = None      # overrides --repeat (slow benchmarks)
    warmup: int = 1                # untimed calls before the timed ones
    issue: str = ""                # where the goal comes from
    note: str = ""                 # how the timed unit maps to the quantity of interest (report footnote)
    per_call_scale: float | None = None   # multiply a call's time by this for the extrapolated column
    scale_label: str = ""                 # what the extrapolated column means


_EPOCH = (f"one timed call = {D.TRAIN_BATCHES} optimizer steps of batch {D.TRAIN['batch']}; an epoch of the "
          f"synthetic LastFM-sized split (N {D.TRAIN['n']:,}) is int(N/256) = {D.EPOCH_BATCHES} steps, so the "
          f"per-epoch column is the median call time x {D.EPOCH_BATCHES}/{D.TRAIN_BATCHES} (extrapolated, "
          "not measured; evaluation not included)")

BENCHMARKS: dict[str, Benchmark] = {
    # ------------------------------------------------------------------ DLLM2Rec (issue 5)
    "dllm2rec.train_10_batches": Benchmark(
        what=f"SASRec student, {D.TRAIN_BATCHES} training steps (batch 256, item_num 4606, K 10, "
             "BCE + DRO + ranking distillation, Adam), no teacher embeddings",
        reference=D.ref_train, reimpl=D.reimpl_train, goal=10, repeat=3, issue="issue 5",
        note=_EPOCH, per_call_scale=D.EPOCH_BATCHES / D.TRAIN_BATCHES, scale_label="per epoch"),
    "dllm2rec.train_10_batches_ed": Benchmark(
        what="as above + teacher embeddings [4606, 4096] injected (ed_weight 0.2)",
        reference=D.ref_train_ed, reimpl=D.reimpl_train_ed, goal=10, repeat=3, issue="issue 5",
        note=_EPOCH, per_call_scale=D.EPOCH_BATCHES / D.TRAIN_BATCHES, scale_label="per epoch"),
    "dllm2rec.evaluate_games.faithful": Benchmark(
        what="full evaluation, Amazon Games test split (14,980 rows x 17,408 items, CSV read included), "
             "SASRec + teacher embeddings [17408, 4096]; reimpl mode=faithful (same ranks as the reference's "
             f"argsort), {D.EVAL_BATCH} rows per forward",
        reference=D.ref_eval, reimpl=D.reimpl_eval_faithful, goal=10, repeat=2, warmup=0, issue="issue 5",
        note="the reference scores the whole split in one forward (train mode) and argsorts [14980, 17408]; "
             "no warm-up call (each call is ~1 min); peak RSS is the point: the reference's grows with the split"),
    "dllm2rec.evaluate_games.fixed": Benchmark(
        what=f"as above, reimpl mode=fixed (eval mode, tie-aware rank by counting, no sort), {D.EVAL_BATCH} "
             "rows per forward",
        reference=D.ref_eval, reimpl=D.reimpl_eval_fixed, goal=10, repeat=2, warmup=0, issue="issue 5",
        note="fixed computes a different (declared) quantity: DLLM2REC-EVAL-TIES, DLLM2REC-EVAL-DROPOUT"),
    # ------------------------------------------------------------------ iLoRA (issue 4)
    "ilora.inject": Benchmark(
        what="embedding injection, LastFM batch of 8 (tiny Llama, hidden 64): token-embedding lookup + "
             "placeholder replacement; item/user encodings precomputed on both sides",
        reference=L.ref_inject, reimpl=L.reimpl_inject, goal=20, repeat=50, issue="issue 4",
        note="reference: MInterface.wrap_emb with encode_items/encode_users answered from tensors its own "
             "encoders computed at setup (so its 3 tokenizer look-ups + per-row loop are what is timed); "
             "reimpl: embedding lookup + reimpl.ilora.prompt.inject_item_embeds"),
    "ilora.inject_b64": Benchmark(
        what="as above, batch of 64 LastFM rows (how the per-row loop and the vectorized version scale)",
        reference=L.ref_inject_b64, reimpl=L.reimpl_inject_b64, goal=20, repeat=30, issue="issue 4",
        note="same as ilora.inject with 64 rows (train_lastfm.sh uses 8); not a separate goal of the issue"),
    "ilora.wrap_emb": Benchmark(
        what="whole wrap_emb, LastFM batch of 8: item encodings (SASRec + projector) x 3, user state, injection",
        reference=L.ref_wrap_emb, reimpl=L.reimpl_wrap_emb, goal=20, repeat=50, issue="issue 4",
        note="reference MInterface.wrap_emb vs reimpl ILoRATeacher.wrap_emb, eval mode, no grad"),
    "ilora.moe_lora_linear": Benchmark(
        what=f"MoE-LoRA Linear forward, x [{L.LIN['b']}, {L.LIN['l']}, {L.LIN['d_in']}] -> {L.LIN['d_out']} "
             f"(SmolLM2-135M up_proj shape), r {L.LIN['r']}, {L.LIN['e']} experts, train mode (dropout 0.1), "
             "autograd on",
        reference=L.ref_moe_lora, reimpl=L.reimpl_moe_lora, goal=1, repeat=30, issue="issue 4",
        note="goal: no slower (speed-up >= 1)"),
    "ilora.teacher_forward": Benchmark(
        what="teacher forward + LM loss, LastFM batch of 8, tiny random Llama (hidden 64, 2 layers), "
             "MoE-LoRA on q/k/v/o/gate/up/down, shared router, train mode, autograd on (no backward)",
        reference=L.ref_teacher_forward, reimpl=L.reimpl_teacher_forward, repeat=20, issue="issue 4",
        note="reference MInterface.forward + configure_loss vs reimpl ILoRATeacher.forward (no stated goal)"),
}
