"""Research engine for DLLM2Rec students in fixed mode: the same maths as ``mode="fixed"``
(:mod:`reimpl.dllm2rec.train`), laid out for speed. faithful mode is untouched and stays the reference's.

* :mod:`reimpl.engine.sampling`  exact uniform negatives by rejection sampling (no ``[B, I]`` pool)
* :mod:`reimpl.engine.forward`   student forward with the teacher table projected only for the batch's
  unique items; SASRec and Caser encoders restated with less work (GRU4Rec: the model's own forward)
* :mod:`reimpl.engine.losses`    one fused objective: BCE (or full-softmax CE), DRO and ranking
  distillation sharing one ``[B, I]`` log-sum-exp
* :mod:`reimpl.engine.train`     resident-tensor training loop, evaluation every N epochs, resumable
"""
