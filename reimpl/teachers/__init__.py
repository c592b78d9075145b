"""Teachers that rank by inner product (seed 003's alternatives to iLoRA), under one export contract.

* :mod:`reimpl.teachers.export`  the files DLLM2Rec reads and their compact committed form (one contract);
* :mod:`reimpl.teachers.common`  LastFM rows, held-out rows, candidate draws, metrics, the SASRec bar;
* :mod:`reimpl.teachers.encode`  frozen-LLM text encoder (length-bucketed, last-token and mean pooling, cached);
* :mod:`reimpl.teachers.dense`   Contriever-style dual encoder trained with InfoNCE;
* :mod:`reimpl.teachers.e4srec`  E4SRec: SASRec item ids injected into the LLM prompt, scores over all items;
* :mod:`reimpl.teachers.run`     CLI (train, evaluate, export) and :mod:`reimpl.teachers.report` (reports/teachers.md).
"""
