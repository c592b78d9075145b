"""Student baselines of DLLM2Rec without distillation: the unmodified reference ``main.py`` and reimpl
(faithful and fixed) trained side by side on real data, with seeds, statistics and a Markdown report.

``python -m reimpl.baselines run --plan quick|full`` (``make baseline-quick`` / ``make baseline``),
``python -m reimpl.baselines report --plan full``. Modules: ``config`` (plans as data), ``data``
(prepared working directories), ``runner`` (one run = one subprocess, results cache, resume),
``stats`` (selection, mean ± std, Welch tests), ``report`` (figures + Jinja2 template).
"""
