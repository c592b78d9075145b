"""Proposed extensions of DLLM2Rec distillation (issue 8; not in either reference repository).

* :mod:`.uamd`      uncertainty-aware distillation: per-sample teacher uncertainty from MoE-LoRA
  expert disagreement, weight ``w(u)`` on the KD term.
* :mod:`.rdr`       rationale-distilled representation: SmolLM2 rationales -> MiniLM vectors ->
  ``1 - cos(proj(h_student), v)``.
* :mod:`.cdr`       cyclic distillation refinement: student -> teacher embedding feedback, teacher ->
  student distillation, for several rounds.
* :mod:`.selection` sample-selection policies (all / KL / ground-truth error) on the KD term.
* :mod:`.metrics`   NDCG@10, HR@10, MRR and expected calibration error of a student.
* :mod:`.hooks`     composes the above into :class:`reimpl.dllm2rec.train.TrainHooks` from one config.
* :mod:`.standin`   a clearly labelled stand-in teacher (SASRec experts) for trials without iLoRA.
* :mod:`.engine_trial` ``make extensions`` -> ``reports/extensions.md`` (issue 17: the trial on the research
  engine, from the committed records); :mod:`.rdr_view` its RDR representation view.
* :mod:`.trial`     ``make extensions-slice`` -> ``reports/extensions_slice.md`` (the superseded 256-row trial).
"""
