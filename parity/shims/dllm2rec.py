"""Run-time loader for the unmodified DLLM2Rec reference (istarryn/DLLM2Rec @ b78cc658).

``load()`` returns a :class:`DLLM2RecRef` namespace holding

* module-level objects of ``main.py``: ``GRU``, ``Caser``, ``SASRec``, ``calcu_propensity_score``,
  ``myevaluate``, ``parse_args``; of ``utility.py``: ``calculate_hit``, ``extract_axis_1``;
* callables compiled at run time from statements of the ``if __name__ == '__main__'`` block of
  ``main.py`` (selected with ``ast`` by line range inside the per-batch ``for`` loop, checked against a
  structural fingerprint of the pinned commit; nothing is copied into this repository):

  ======================  =============  ===================================================  ==========================
  callable                main.py lines  explicit inputs                                      returns (locals)
  ======================  =============  ===================================================  ==========================
  ``neg_sampling``        382-392        args, item_num, device, seq, target                  zeros_tensor, neg_tensor,
                                                                                              batch_neg, target_neg
  ``llm_emb_lookup``      395-401        device, seq, llm_all_emb                             llm_emb
  ``bce``                 407-417        args, device, model_output, target, target_neg,      loss, scores, labels,
                                         bce_loss                                             target, target_neg
  ``dro``                 420-431        args, model_output, target, ps, loss                 loss_dro, loss_all
  ``ranking_distill``     433-486        args, device, model_output, target_neg, ps, sample,  weight_rank, weight_com,
                                         all_candidate, llm_confidence, loss_all              weight_confidence, weight,
                                                                                              loss_all_rd, loss_all
  ``train_step``          360-492        args, item_num, device, model, model_name,           loss_all, sample, seq,
                                         optimizer, bce_loss, train_data, ps, all_candidate,  target_neg, model_output,
                                         llm_confidence, llm_all_emb                          weight, loss_all_rd ...
  ======================  =============  ===================================================  ==========================

  Every input is an explicit keyword argument (the reference reads them as module globals of the
  ``__main__`` block: ``args``, ``item_num``, ``device``, ``model``, ...). ``train_step`` is the whole
  body of the reference's per-batch loop, including ``train_data.sample`` (global numpy RNG),
  ``torch.multinomial`` (global torch RNG), the forward, ``backward`` and ``optimizer.step``; the
  reference's ``exit(-1)`` on a NaN loss raises :class:`ReferenceExit` instead of ending the process.

Module globals read by module-level reference code (set with :meth:`DLLM2RecRef.globals`, a context
manager that sets and restores them on the loaded ``main`` module):

* ``GRU.forward`` / ``Caser.forward`` / ``SASRec.forward``: ``args`` (``args.ed_weight``, only when
  ``llm_emb`` is given);
* ``calcu_propensity_score``: ``item_num``;
* ``myevaluate``: ``topk`` (it also prints; wrap with ``contextlib.redirect_stdout`` to silence).

Bridges (each bridges a library or process-level difference, never reference logic):

* Import isolation: ``main.py`` does ``from utility import ...`` and ``from SASRecModules_ori import *``;
  iLoRA ships its own top-level ``SASRecModules_ori``. The repo dir is put on ``sys.path`` only while
  importing, and the generic module names are removed from ``sys.modules`` afterwards (previous
  entries restored), under ``sys.dont_write_bytecode`` so nothing is written into the checkout.
* ``exit`` inside extracted blocks (``train_step``'s NaN guard) raises ``ReferenceExit`` so a test
  process is not ended.

Checked and *not* bridged (they work unchanged on torch 2.13 / numpy 2.4 / pandas 3.1): ``tensor != None``
returns the Python bool ``True``; ``torch.LongTensor`` of a float64 ``np.loadtxt`` array; indexing a
tensor with a ``pandas.Index`` (``all_candidate[sample]``); ``ng_purchase[0, 0]`` on the ``[1, 1]``
array ``np.log2`` returns; ``DataFrame.sample`` draws from the global numpy RNG like
``np.random.choice(N, n, replace=False)``. The reference's own crashes (``h_out.squeeze()`` in Caser and
``.squeeze()`` in SASRec at batch size 1, the hard-coded ``repeat(1, 10)`` for ``seq_size != 10``, the
hard-coded 4096/64 of ``fc_4096_64``) are reproduced, not bridged: they are reference behaviour.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from parity.materialize import REF_DIR, RefError, load_lock, verify

NAME = "DLLM2Rec"
_GENERIC_MODULES = ("utility", "SASRecModules_ori")
_LOCK = threading.Lock()
_CACHE: dict[str, "DLLM2RecRef"] = {}


class ReferenceExit(RuntimeError):
    """The reference called ``exit(code)`` inside an extracted block."""


def _ref_exit(code: int = 0):
    raise ReferenceExit(f"DLLM2Rec main.py called exit({code})")


@dataclass(frozen=True)
class _Anchor:
    """A slice of the per-batch loop of main.py's __main__ block, with its structural fingerprint.

    ``fingerprint`` is sha256(ast.dump(statements))[:16] at the pinned commit: a mismatch means the
    file changed and the extraction must be re-checked.
    """

    first: int
    last: int
    params: tuple[str, ...]
    returns: tuple[str, ...]
    fingerprint: str
    uses: tuple[str, ...] = ()  # names the block reads that are not parameters (for the docs/tests)


ANCHORS: dict[str, _Anchor] = {
    "neg_sampling": _Anchor(
        382, 392, ("args", "item_num", "device", "seq", "target"),
        ("real_batch_size", "zeros_tensor", "neg_tensor", "batch_neg", "target_neg"),
        "ae5b43824dd7f83e"),
    "llm_emb_lookup": _Anchor(395, 401, ("device", "seq", "llm_all_emb"), ("llm_emb", "mask"),
                              "68e204533b4ac70a"),
    "bce": _Anchor(
        407, 417, ("args", "device", "model_output", "target", "target_neg", "bce_loss"),
        ("loss", "scores", "labels", "pos_scores", "neg_scores", "target", "target_neg"),
        "61e05e24aa0880fd"),
    "dro": _Anchor(420, 431, ("args", "model_output", "target", "ps", "loss"),
                   ("loss_dro", "inner_dro", "loss_all"), "4afa2ce0adab2fdc"),
    "ranking_distill": _Anchor(
        433, 486,
        ("args", "device", "model_output", "target_neg", "ps", "sample", "all_candidate",
         "llm_confidence", "loss_all"),
        ("candidate", "weight_rank", "weight_com", "weight_confidence", "weight_fin", "weight",
         "loss_all_rd", "loss_all"),
        "8cb59e51b336fea0"),
    "train_step": _Anchor(
        360, 492,
        ("args", "item_num", "device", "model", "model_name", "optimizer", "bce_loss", "train_data",
         "ps", "all_candidate", "llm_confidence", "llm_all_emb"),
        ("sample", "seq", "len_seq", "target_neg", "model_output", "loss", "loss_all", "weight",
         "loss_all_rd", "llm_emb"),
        "e4de16ea7625ba79"),
}


@dataclass
class DLLM2RecRef:
    """Handles on the loaded reference. See the module docstring for what each callable needs."""

    path: Path
    main: ModuleType
    utility: ModuleType
    sasrec_modules: ModuleType
    GRU: type
    Caser: type
    SASRec: type
    calcu_propensity_score: Callable
    myevaluate: Callable
    parse_args: Callable
    calculate_hit: Callable
    extract_axis_1: Callable
    blocks: dict[str, Callable[..., dict[str, Any]]] = field(default_factory=dict)

    def __getattr__(self, name: str):  # ref.neg_sampling(...) etc.
        blocks = self.__dict__.get("blocks", {})
        if name in blocks:
            return blocks[name]
        raise AttributeError(name)

    @contextlib.contextmanager
    def globals(self, **values):
        """Temporarily set module globals of main.py (``args``, ``item_num``, ``topk``, ``device``)."""
        missing = object()
        old = {k: getattr(self.main, k, missing) for k in values}
        for k, v in values.items():
            setattr(self.main, k, v)
        try:
            yield self
        finally:
            for k, v in old.items():
                if v is missing:
                    delattr(self.main, k)
                else:
                    setattr(self.main, k, v)

    def default_args(self, **overrides):
        """The reference's ``parse_args()`` defaults (argv emptied), with overrides applied."""
        saved = sys.argv
        sys.argv = [str(self.path / "main.py")]
        try:
            ns = self.parse_args()
        finally:
            sys.argv = saved
        for k, v in overrides.items():
            if not hasattr(ns, k):
                raise AttributeError(f"DLLM2Rec main.py parse_args has no option {k!r}")
            setattr(ns, k, v)
        return ns


def _import_isolated(repo: Path) -> tuple[ModuleType, ModuleType, ModuleType]:
    saved_mods = {k: sys.modules.pop(k) for k in _GENERIC_MODULES if k in sys.modules}
    saved_bc = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(repo))
    try:
        spec = importlib.util.spec_from_file_location("_dllm2rec_ref_main", repo / "main.py")
        main = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(main)  # __name__ != '__main__': the training block does not run
        utility = sys.modules["utility"]
        sasmod = sys.modules["SASRecModules_ori"]
    finally:
        sys.path.remove(str(repo))
        for k in _GENERIC_MODULES:
            sys.modules.pop(k, None)
        sys.modules.update(saved_mods)
        sys.dont_write_bytecode = saved_bc
    return main, utility, sasmod


def _is_main_guard(node: ast.stmt) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _loop(body: list[ast.stmt], var: str, where: str) -> ast.For:
    loops = [n for n in body if isinstance(n, ast.For) and isinstance(n.target, ast.Name)
             and n.target.id == var]
    if len(loops) != 1:
        raise RefError(f"DLLM2Rec main.py: expected one `for {var} in ...` loop in {where}, "
                       f"found {len(loops)}; the pinned file changed?")
    return loops[0]


def batch_loop_body(tree: ast.Module) -> list[ast.stmt]:
    """Statements of the per-batch loop: __main__ guard -> ``for i`` (epochs) -> ``for j`` (batches)."""
    guards = [n for n in tree.body if _is_main_guard(n)]
    if len(guards) != 1:
        raise RefError("DLLM2Rec main.py: no unique `if __name__ == '__main__'` block")
    epoch = _loop(guards[0].body, "i", "the __main__ block")
    return _loop(epoch.body, "j", "the epoch loop").body


def select(body: list[ast.stmt], name: str, anchor: _Anchor) -> list[ast.stmt]:
    stmts = [s for s in body if s.lineno >= anchor.first and s.end_lineno <= anchor.last]
    if not stmts or stmts[0].lineno != anchor.first or stmts[-1].end_lineno != anchor.last:
        got = f"{stmts[0].lineno}-{stmts[-1].end_lineno}" if stmts else "nothing"
        raise RefError(f"DLLM2Rec main.py: block {name!r} expected statements spanning lines "
                       f"{anchor.first}-{anchor.last}, found {got}")
    fp = fingerprint(stmts)
    if fp != anchor.fingerprint:
        raise RefError(f"DLLM2Rec main.py:{anchor.first}-{anchor.last}: block {name!r} has structural "
                       f"fingerprint {fp}, the loader was checked against {anchor.fingerprint} "
                       "(reference file differs from the pinned commit)")
    return stmts


def fingerprint(stmts: list[ast.stmt]) -> str:
    return hashlib.sha256("\n".join(ast.dump(s) for s in stmts).encode()).hexdigest()[:16]


def compile_block(name: str, stmts: list[ast.stmt], anchor: _Anchor, filename: str,
                  module_globals: dict) -> Callable[..., dict[str, Any]]:
    """Wrap ``stmts`` in ``def <name>(*, <params>): ...; return {<returns>}`` keeping main.py line numbers."""
    # The wrapper is written here; only the selected statements come from main.py.
    wrapper = ast.parse(
        f"def {name}(*, {', '.join(anchor.params)}):\n"
        "    pass\n"
        "    _l = locals()\n"
        f"    return {{k: _l[k] for k in {anchor.returns!r} if k in _l}}\n")
    fn = wrapper.body[0]
    fn.body = list(stmts) + fn.body[1:]
    ast.fix_missing_locations(wrapper)
    code = compile(wrapper, filename, "exec")
    g = dict(module_globals)
    g["exit"] = _ref_exit
    # a name the block reads but that is no parameter would silently come from main's module
    # globals; those set only inside the __main__ block do not exist there, so they raise NameError.
    exec(code, g)
    return g[name]


def load() -> DLLM2RecRef:
    """Load (once per process) the verified reference checkout; raises RefError where absent."""
    with _LOCK:
        if NAME in _CACHE:
            return _CACHE[NAME]
        spec = load_lock()[NAME]
        verify(spec)  # file-by-file sha256 against the manifest: the anchors refer to this exact file
        repo = REF_DIR / NAME
        main, utility, sasmod = _import_isolated(repo)
        tree = ast.parse((repo / "main.py").read_text(), filename=str(repo / "main.py"))
        body = batch_loop_body(tree)
        blocks = {name: compile_block(name, select(body, name, a), a, str(repo / "main.py"),
                                      vars(main))
                  for name, a in ANCHORS.items()}
        ref = DLLM2RecRef(
            path=repo, main=main, utility=utility, sasrec_modules=sasmod,
            GRU=main.GRU, Caser=main.Caser, SASRec=main.SASRec,
            calcu_propensity_score=main.calcu_propensity_score, myevaluate=main.myevaluate,
            parse_args=main.parse_args, calculate_hit=utility.calculate_hit,
            extract_axis_1=utility.extract_axis_1, blocks=blocks)
        _CACHE[NAME] = ref
        return ref
