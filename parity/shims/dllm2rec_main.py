"""Run the unmodified DLLM2Rec ``main.py`` as ``__main__`` with another seed, and record its evaluations.

Usage (a subprocess; ``--`` separates the shim's options from ``main.py``'s)::

    PYTHONDONTWRITEBYTECODE=1 python -m parity.shims.dllm2rec_main --seed S --workdir DIR \
        [--capture ranks.json] -- --model_name GRU --data lastfm --lam 0 --ed_weight 0 --alpha 0 --epoch 5

``DIR`` holds the layout ``main.py`` reads relative to its working directory (``./data/<name>/...``,
``./tocf/<name>/...``). The reference file is executed with ``runpy.run_path(..., run_name="__main__")``
from the verified checkout (``ref_repositories/DLLM2Rec``); it is neither copied nor edited.

Bridges (process-level only; no reference logic is replaced):

* **seed**: ``main.py:286`` calls ``set_seed(2024)`` unconditionally (``main.py:277-281``:
  ``np.random.seed``, ``torch.cuda.manual_seed``, ``torch.cuda.manual_seed_all``, ``torch.manual_seed``).
  While the script runs, those four functions are wrapped so that the literal 2024 becomes ``S``;
  any other value passes through unchanged. Every call is logged in the capture (``seed_calls``).
  With ``--seed 2024`` the run is the reference's own.
* **imports**: the checkout is put first on ``sys.path`` (``main.py`` does ``from utility import ...``,
  ``from SASRecModules_ori import *``), ``sys.dont_write_bytecode`` is set and ``PYTHONDONTWRITEBYTECODE``
  exported, so nothing is written into the verified checkout.
* **capture (read-only)**: ``utility.calculate_hit`` (``utility.py:75-82``), which ``myevaluate``
  (``main.py:235``) calls once per evaluated split with the ascending ``argsort`` of the scores
  (``sorted_list`` ``[N, I]``) and the targets, is replaced on the imported ``utility`` module by a
  wrapper that first records each target's 1-based rank (``I - position in sorted_list``, the
  reference's own order, ties included) and then calls the original with the same arguments. It
  consumes no random numbers and does not change what the reference prints. The reference prints no
  MRR; MRR of reference runs in the baseline report is computed from these recorded ranks.
  Calls alternate VAL, TEST once per epoch (``main.py:499-505``).
* **final state (read-only)**: with ``--final-state F``, after a run that returns normally, the
  ``model`` and ``loss_all`` globals runpy hands back are written to ``F`` (safetensors) and ``F.json``.
* **exit**: the reference ends early stopping with ``exit(0)`` (``main.py:524``); the shim catches
  ``SystemExit``, writes the capture and exits with the same code.

The capture JSON: ``{"seed", "argv", "workdir", "seed_calls": [[fn, given, used], ...],
"evals": [{"call", "split", "epoch", "n", "n_items", "ranks": [...], "t": unix}], "exit_code",
"wall_s"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
from pathlib import Path

HARD_CODED_SEED = 2024  # main.py:286


def _ref_dir() -> Path:
    from parity.materialize import REF_DIR, load_lock, verify

    spec = load_lock()["DLLM2Rec"]
    verify(spec)  # refuses a checkout that differs from the lock
    return REF_DIR / "DLLM2Rec"


def _wrap_seeders(seed: int, log: list) -> list:
    """Replace the four seeding functions set_seed uses; returns the (obj, name, original) to restore."""
    import numpy as np
    import torch

    saved = []
    for owner, name, label in ((np.random, "seed", "np.random.seed"),
                               (torch, "manual_seed", "torch.manual_seed"),
                               (torch.cuda, "manual_seed", "torch.cuda.manual_seed"),
                               (torch.cuda, "manual_seed_all", "torch.cuda.manual_seed_all")):
        orig = getattr(owner, name)

        def wrapped(value, *a, _orig=orig, _label=label, **k):
            used = seed if (isinstance(value, int) and value == HARD_CODED_SEED) else value
            log.append([_label, value, used])
            return _orig(used, *a, **k)

        setattr(owner, name, wrapped)
        saved.append((owner, name, orig))
    return saved


def _wrap_calculate_hit(utility, evals: list) -> None:
    import numpy as np

    orig = utility.calculate_hit

    def calculate_hit(sorted_list, topk, true_items, hit_purchase, ndcg_purchase):
        sl = np.asarray(sorted_list)
        n_items = sl.shape[1]
        t = np.asarray(true_items, dtype=np.float64)
        match = sl == t[:, None]
        found = match.any(1)
        ranks = np.where(found, n_items - match.argmax(1), -1)  # -1: target not an item id
        call = len(evals)
        evals.append({"call": call, "split": ("val", "test")[call % 2], "epoch": call // 2 + 1,
                      "n": int(len(t)), "n_items": int(n_items), "ranks": [int(r) for r in ranks],
                      "t": time.time()})
        return orig(sorted_list, topk, true_items, hit_purchase, ndcg_purchase)

    utility.calculate_hit = calculate_hit


def _save_final_state(g: dict, path: str | Path) -> None:
    """The script's final ``model`` parameters (safetensors) and last ``loss_all`` (full precision, JSON
    beside it), read from the globals runpy returns after a normal end (``--epoch`` reached)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous().clone() for k, v in g["model"].state_dict().items()}
    save_file(sd, str(path))
    Path(str(path) + ".json").write_text(json.dumps({"loss_all": float(g["loss_all"].item())}))


def run(seed: int, workdir: str | Path, main_args: list[str], capture: str | Path | None = None,
        final_state: str | Path | None = None) -> int:
    """Execute main.py in ``workdir`` with ``main_args``; returns its exit code."""
    sys.dont_write_bytecode = True
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    ref = _ref_dir()
    main_py = ref / "main.py"
    workdir = Path(workdir).resolve()
    if not (workdir / "data").is_dir():
        raise FileNotFoundError(f"{workdir}: no data/ folder (main.py reads ./data/<name>/)")
    seed_calls: list = []
    evals: list = []
    sys.path.insert(0, str(ref))
    import utility  # the reference's utility.py (first on sys.path)

    if Path(utility.__file__).resolve().parent != ref.resolve():
        raise RuntimeError(f"'utility' resolved to {utility.__file__}, not the reference checkout {ref}")
    _wrap_calculate_hit(utility, evals)
    saved = _wrap_seeders(seed, seed_calls)
    old_cwd, old_argv = os.getcwd(), sys.argv
    os.chdir(workdir)
    sys.argv = [str(main_py)] + list(main_args)
    t0 = time.time()
    code = 0
    try:
        g = runpy.run_path(str(main_py), run_name="__main__")
        if final_state:
            _save_final_state(g, final_state)
    except SystemExit as e:  # main.py:524 exit(0) after early stopping; :313/:490 exit(-1)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdout.flush()
        os.chdir(old_cwd)
        sys.argv = old_argv
        for owner, name, orig in saved:
            setattr(owner, name, orig)
        if capture:
            Path(capture).parent.mkdir(parents=True, exist_ok=True)
            Path(capture).write_text(json.dumps(
                {"seed": seed, "argv": list(main_args), "workdir": str(workdir), "main_py": str(main_py),
                 "seed_calls": seed_calls, "evals": evals, "exit_code": code,
                 "wall_s": time.time() - t0}))
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        own, rest = argv[:i], argv[i + 1:]
    else:
        own, rest = argv, []
    ap = argparse.ArgumentParser(prog="python -m parity.shims.dllm2rec_main",
                                 description="run the unmodified DLLM2Rec main.py with seed S "
                                             "(arguments after -- go to main.py)")
    ap.add_argument("--seed", type=int, default=HARD_CODED_SEED)
    ap.add_argument("--workdir", required=True, help="folder holding data/<name>/ (and tocf/<name>/)")
    ap.add_argument("--capture", default=None, help="JSON file for the recorded ranks and seed calls")
    ap.add_argument("--final-state", default=None,
                    help="safetensors file for the final model parameters (+ .json: last loss) after a run "
                         "that ends by reaching --epoch")
    a = ap.parse_args(own)
    return run(a.seed, a.workdir, rest, a.capture, a.final_state)


if __name__ == "__main__":
    sys.exit(main())
