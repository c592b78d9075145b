"""Declared deviations of ``mode="fixed"`` from the DLLM2Rec reference (istarryn/DLLM2Rec @ b78cc658).

Imported by ``reimpl.dllm2rec`` (package import registers them). Each names the parity case in
``parity/cases/dllm2rec_*.py`` that runs reimpl faithful vs fixed on the case's inputs.
"""

from reimpl.deviations import Deviation, declare

S = "DLLM2Rec"

declare(Deviation(
    id="DLLM2REC-RD-NEG-TERM", system=S, ref="main.py:470",
    what="ranking-distillation BCE uses log(sigmoid(1 - s_neg)) for the sampled negative (label-free "
         "term written with (1 - neg_labels)); this is not the BCE negative term log(1 - sigmoid(s_neg))",
    why="shifts the negative's logit by +1 inside the sigmoid: the gradient pushes s_neg down around "
        "s_neg = 1 instead of 0, and the term's value differs by up to ~1 nat per candidate",
    fixed="log(1 - sigmoid(s_neg)) computed stably as logsigmoid(-s_neg); positives use logsigmoid too",
    case="dllm2rec.rd_loss"))

declare(Deviation(
    id="DLLM2REC-RD-DRO-BROADCAST", system=S, ref="main.py:474-483",
    what="per-candidate DRO term: torch.squeeze makes loss_dro_rd [B], and weight[:, i:i+1] * loss_dro_rd "
         "broadcasts [B, 1] * [B] to [B, B]; its mean is mean_b(w_bk) * mean_b(dro_bk), so the importance "
         "weights are averaged out of the DRO term instead of weighting each row's loss",
    why="the per-row weighting the paper describes applies to the BCE part only; the DRO part gets the "
        "column-mean weight (and B^2 memory/time per candidate)",
    fixed="mean_b(w_bk * dro_bk) (row-wise weighting, [B, K])",
    case="dllm2rec.rd_loss"))

declare(Deviation(
    id="DLLM2REC-DRO-OVERFLOW", system=S, ref="main.py:425-428, 477-481",
    what="DRO computes log(sum_j exp(o_j^2 ps_j / beta) - exp(a_t) + exp(b_t) + 1e-24) directly: "
         "exp overflows to inf once o^2 ps / beta > ~709 (float64), i.e. |score| > ~35 with ps ~ 0.6",
    why="an inf loss poisons the step (the reference only checks NaN) ",
    fixed="the same quantity shifted by its row max (log-sum-exp form) without the 1e-24; equal to "
          "rounding on ordinary inputs, finite for large scores",
    case="dllm2rec.dro_loss"))

declare(Deviation(
    id="DLLM2REC-NEG-MASK-10", system=S, ref="main.py:385",
    what="the history mask indexes rows with arange(B).unsqueeze(1).repeat(1, 10): sequence length "
         "hard-coded to 10; any other seq_size raises a broadcasting error",
    why="datasets with another history length cannot be trained",
    fixed="repeat to the actual sequence length (identical draws for length 10)",
    case="dllm2rec.neg_sampling"))

declare(Deviation(
    id="DLLM2REC-CASER-SQUEEZE", system=S, ref="main.py:130-131",
    what="h_out.squeeze() removes every size-1 axis of [B, F, T, 1]: with B == 1, num_filters == 1 or "
         "a filter as tall as the sequence (T == 1) max_pool1d then fails (IndexError)",
    why="batch size 1 (e.g. evaluating a single row) crashes",
    fixed="squeeze(3) only; faithful raises a ValueError naming the cause where the reference crashes",
    case="dllm2rec.students_forward",
    effect_note="identical outputs for B > 1 (measured 0 in dllm2rec.students_forward); at B == 1 "
                "faithful raises, fixed returns [1, I] (tests/test_dllm2rec_models.py)"))

declare(Deviation(
    id="DLLM2REC-SASREC-SQUEEZE", system=S, ref="main.py:193",
    what="s_fc(state_hidden).squeeze() returns [I] instead of [1, I] for a batch of one",
    why="gather(model_output, 1, ...) and the evaluation's sorted_list[:, -k:] fail on the 1-D result",
    fixed="squeeze(1) only: always [B, I]",
    case="dllm2rec.students_forward",
    effect_note="identical for B > 1; at B == 1 faithful returns [I] (tests/test_dllm2rec_models.py)"))

declare(Deviation(
    id="DLLM2REC-GRU-LAYERS", system=S, ref="main.py:74",
    what="hidden.view(-1, H) stacks the final state of every GRU layer: [layers * B, H]",
    why="with gru_layers > 1 the scores have layers * B rows and the loss shapes break; the reference "
        "always uses 1 layer",
    fixed="final state of the last layer only, [B, H]",
    case="dllm2rec.students_forward",
    effect_note="no effect at the reference's gru_layers=1 (0 in dllm2rec.students_forward)"))

declare(Deviation(
    id="DLLM2REC-FC-4096-64", system=S, ref="main.py:62, 117, 172, 222, 396",
    what="collaborative-embedding projection and lookup buffer hard-code 4096 (teacher width) and 64 "
         "(student width)",
    why="any other teacher width or hidden_factor != 64 fails when ed_weight != 0",
    fixed="projection d_llm -> hidden_factor; d_llm is a config field in both modes (default 4096)",
    case="dllm2rec.students_forward",
    effect_note="no effect at hidden_factor=64, d_llm=4096 (the reference's only working setting)"))

declare(Deviation(
    id="DLLM2REC-EVAL-DROPOUT", system=S, ref="main.py:198-231, 494-505",
    what="model.eval() is never called: validation and test are scored in train mode (dropout active in "
         "SASRec and Caser), with the autograd graph built, consuming the global torch RNG",
    why="reported HR/NDCG are those of a randomly thinned network and change with the RNG state; the "
        "evaluation also shifts every later training draw",
    fixed="model.eval() and no_grad during evaluation",
    case="dllm2rec.evaluate"))

declare(Deviation(
    id="DLLM2REC-EVAL-TIES", system=S, ref="main.py:231; utility.py:75-82",
    what="the target's rank is its place in an ascending torch.argsort of the scores: among tied scores "
         "the stable CPU sort ranks the higher item id first (another device/sort may differ)",
    why="ties (e.g. an untrained model, saturated scores) inflate or deflate HR/NDCG arbitrarily",
    fixed="pessimistic rank: 1 + #items scoring higher + #other items scoring equal",
    case="dllm2rec.metrics"))

declare(Deviation(
    id="DLLM2REC-SELECT-ON-TEST", system=S, ref="main.py:505-519",
    what="the best epoch and early stopping (patience 10) use TEST NDCG@20; validation is computed and "
         "ignored",
    why="test-set model selection: reported test metrics are optimistically biased",
    fixed="select and early-stop on VAL NDCG@20; report TEST at the best validation epoch",
    effect_note="measured on whole runs (baseline report), not by a parity case"))

declare(Deviation(
    id="DLLM2REC-FIXED-OP-ORDER", system=S, ref="main.py:419-428, 461-485",
    what="the loss is built one [B, 1] candidate at a time: per candidate two gathers, a [B, 1] mean, and "
         "the DRO term recomputing o*o*ps over [B, I] (twice) and (o-1)*(o-1)*ps; each branch's float64 "
         "gradient is rounded to float32 before the branches are summed",
    why="faithful replays this graph so that float32 losses and gradients equal the reference's bit for "
        "bit; it costs K + 1 passes over [B, I]",
    fixed="all K candidates as one [B, K] tensor (column means), o*o*ps computed once and gathered, the "
          "DRO sum in log-sum-exp form: the same quantities, rounded differently (float32 ~1 ulp)",
    case="dllm2rec.rd_loss_f32"))
