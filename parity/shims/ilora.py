"""In-process loader for the unmodified iLoRA reference (AkaliKong/iLoRA @ 28e47371).

``load()`` imports the reference files in place from ``ref_repositories/iLoRA`` (verified against the
lock first) under the private package name ``_recparity_ref_ilora`` and returns a namespace:

Models (recommender/A_SASRec_final_bce_llm.py, SASRecModules_ori.py)
    ``SASRec``, ``GRU``, ``Caser``, ``extract_axis_1``, ``MultiHeadAttention``, ``PositionwiseFeedForward``
    ``load_rec_model(path)`` -> unpickled ``SASRec`` of ``rec_model/*.pt`` (``__main__.SASRec`` mapped to the
    reference class, ``weights_only=False``, pickled ``device='cuda:0'`` reset to CPU; left in the pickled
    train mode, as torch.load returns it: call ``.eval()`` as model_interface.py:409 does)
Routers / gating (model/router/nlpr.py, model/router/cvr.py, model/peft/tuners/gating.py)
    ``nlpr`` (module), ``NLPRecommendationRouter``, ``ResidualBlock``, ``GateFunction``, ``build_router``
    (the router MInterface uses with ``--router share``: input ``[B, 1, 64]`` -> output ``[B, 1, E]``),
    ``cvr`` (module), ``CvrRouter``, ``CvrBlock``, ``build_cvr_router`` (2-D conv router, input
    ``[B, 3, H, W]`` -> logits ``[B, E]`` (cvr.py:68), never used by MInterface),
    ``GATING_TO_MODEL_MAPPING`` (``Dense``, ``topK``, ``MLP``, ``Drop``, ``MLP_noise``, ``Noise``: ``[B, 64]`` ->
    ``[B, E]``), ``gating`` (module)
MoE-LoRA (model/peft/tuners/moelora.py) and the vendored peft fork (model/peft, 0.4.0.dev0)
    ``moelora`` (module), ``MoeLoraConfig``, ``MoeLoraModel``, ``MoeLoraLayer``, ``MoeLoraLinear`` (its
    ``Linear``), ``mark_only_lora_as_trainable``, ``ref_peft`` (the fork package: ``get_peft_model``,
    ``TaskType``, ``PeftModelForCausalLM``, ...)
Projector (model/mlp_projector.py)
    ``MlpProjector``
Interface / data (model/model_interface.py, data/data_interface.py, data/lastfm_data.py, optims.py)
    ``MInterface``, ``DInterface``, ``TrainCollater``, ``LastfmData``, ``LinearWarmupCosineLRScheduler``
    ``modules``: dict of every loaded reference module by its reference-relative name
Helpers (this file)
    ``lastfm_args(**overrides)``: the argparse Namespace of main.py + train_lastfm.sh
    ``build_minterface(llm_path, tokenizer_path=None, **overrides)``
    ``build_data_module(tokenizer, **overrides)``, ``build_lastfm_batch(tokenizer, ...)``
    ``TokenTypeBridge``, ``moelora_strict(flag)``, ``attach_trainer(model, max_steps)``
    ``BRIDGES``: every bridge to today's libraries (where, why, what)

Typical use::

    from reimpl.llm import tiny
    from parity.shims import ilora
    ns = ilora.load()
    model = ilora.build_minterface(tiny.tiny_llm_dir(seed=0), dtype=torch.float32)  # seeded 1234
    batch = ilora.build_lastfm_batch(model.llama_tokenizer, stage="train", batch_size=4, seed=0)
    loss = model(batch).loss

Numerics note: under transformers 5 a float64 Llama still runs RMSNorm in float32 and computes the LM
loss on ``logits.float()`` (float32); compare logits, or run the reimplementation through the same
transformers Llama, when asking for float64 tolerances.

Isolation: the fork imports itself as ``peft.*`` (model/peft/tuners/adaption_prompt.py:25-26). While
loading, an import alias maps ``peft``/``optims``/``SASRecModules_ori`` to the private copies and any
already-imported installed ``peft`` is stashed; afterwards ``sys.modules`` is restored so ``import peft``
anywhere else gives the installed peft (0.21.2). No bytecode is written while the reference imports.

Every bridge to today's libraries is listed in ``BRIDGES`` (and commented where it is applied).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.abc
import importlib.util
import inspect as _inspect
import os
import pickle
import random
import shlex
import sys
import threading
import types
from collections import namedtuple
from pathlib import Path
from typing import Any

from parity.materialize import load_lock, verify
from reimpl.paths import SHARED, cache_dir

REF_NAME = "iLoRA"
PKG = "_recparity_ref_ilora"  # private package name the reference files load under

# Top-level names the reference imports absolutely -> where they live inside the checkout.
_ALIASES = {
    "peft": f"{PKG}.model.peft",  # model/peft/tuners/adaption_prompt.py:25-26
    "optims": f"{PKG}.optims",  # model/model_interface.py:15
    "SASRecModules_ori": f"{PKG}.SASRecModules_ori",  # recommender/A_SASRec_final_bce_llm.py:11
}

# Each bridge: (where in the reference, what library change it bridges, what the shim does).
BRIDGES = {
    "getargspec": ("model/model_interface.py:396, data/data_interface.py:173",
                   "inspect.getargspec was removed in Python 3.11",
                   "module-local `inspect` proxy whose getargspec wraps getfullargspec (same .args)"),
    "rec_checkpoint": ("model/model_interface.py:408 (torch.load of rec_model/*.pt)",
                       "torch>=2.6 defaults to weights_only=True; pickles name __main__.SASRec and carry "
                       "device='cuda:0'; numpy 2 renamed numpy.core",
                       "module-local `torch` proxy whose load() unpickles with weights_only=False, maps "
                       "__main__.{SASRec,GRU,Caser}/SASRecModules_ori/numpy.core to the loaded classes and "
                       "resets the pickled `device` attribute to cpu"),
    "generate_kwargs": ("model/model_interface.py:74-88 / 95-110 -> moelora.py:207-217",
                        "transformers (4.28 as well as 5.x) validates generate() model kwargs and rejects "
                        "user_embeds/gate_weights; the reference's README asks users to replace "
                        "transformers/generation/utils.py by debug/utils.py, whose line 1106 skips exactly these keys",
                        "per-instance _validate_model_kwargs on the built Llama that drops "
                        "user_embeds/gate_weights/domain_id before the library check (same as debug/utils.py)"),
    "token_type_ids": ("model/model_interface.py:42 `(token_type_ids == 0)[:, 1:]`",
                       "transformers 4.28 slow LlamaTokenizer returned pair token_type_ids one longer than "
                       "input_ids ([0]*(len0+2) + [1]*(len1+1), tokenization_llama.py:249-254 of 4.28); "
                       "today's tokenizer returns them aligned",
                       "TokenTypeBridge: prepend one 0 column to pair-encoded token_type_ids, which reproduces "
                       "the 4.28 layout exactly (so the answer's BOS stays a label, as in the reference)"),
    "dinterface_workers": ("data/data_interface.py:135",
                           "max_steps divides by num_workers; the reference ran with num_workers=8",
                           "build_data_module keeps num_workers for max_steps, then sets 0 for in-process loading"),
    "lightning_trainer": ("main.py:57 Trainer.from_argparse_args",
                          "removed in Lightning 2.x",
                          "MInterface and DInterface are built directly (as main.py:40-48 does before the Trainer)"),
    "llm_dtype": ("model/model_interface.py:318 torch_dtype=torch.bfloat16",
                  "none (CPU parity wants float32/float64); `torch_dtype` is spelled `dtype` in transformers 5",
                  "module-local LlamaForCausalLM proxy loads the Llama in build_minterface(dtype=...) "
                  "(default: the reference's bf16), then the rest of MInterface is cast to it"),
    "peft_fork_isolation": ("model/peft/tuners/adaption_prompt.py:25-26 (`from peft.utils...`)",
                            "the fork imports itself as top-level `peft`, which is today the installed 0.21.2",
                            "alias finder maps peft.* to the private fork copy only while loading; "
                            "sys.modules restored afterwards"),
    "resize_init": ("model/model_interface.py:319 resize_token_embeddings",
                    "transformers>=4.46 initialises added token rows from the old rows' mean/covariance "
                    "(mean_resizing=True); 4.28 used _init_weights (normal(0, initializer_range))",
                    "module-local LlamaForCausalLM proxy: the loaded model's resize defaults to mean_resizing=False"),
    "moelora_strict": ("model/peft/tuners/moelora.py:797-799 (except: print + return zeros_like(x))",
                       "none: the reference swallows every error in MoE-LoRA Linear.forward",
                       "module-local `print` that re-raises the swallowed exception while strict (default on)"),
}

_lock = threading.RLock()
_NS: types.SimpleNamespace | None = None
_STRICT = {"on": True}


# ----------------------------------------------------------------------------------------- import machinery
class _AliasLoader(importlib.abc.Loader):
    def __init__(self, real: str):
        self.real = real
        self._spec = None

    def create_module(self, spec):
        mod = importlib.import_module(self.real)
        self._spec = mod.__spec__
        return mod

    def exec_module(self, module):
        # the import system overwrote __spec__ with the alias' spec; give the module its own back
        module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """While the reference loads: `peft.x` -> `_recparity_ref_ilora.model.peft.x` (same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, rest = fullname.partition(".")
        if head not in _ALIASES:
            return None
        real = _ALIASES[head] + ("." + rest if rest else "")
        real_spec = importlib.util.find_spec(real)
        if real_spec is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(real),
                                               is_package=bool(real_spec.submodule_search_locations))


def _ref_root() -> Path:
    spec = load_lock()[REF_NAME]
    verify(spec)  # RefError names the missing/edited file
    return spec.path


@contextlib.contextmanager
def _reference_import_scope():
    """Alias finder on, installed `peft*`/`optims`/`SASRecModules_ori` stashed, no bytecode; all undone after."""
    heads = tuple(_ALIASES)
    stashed = {k: v for k, v in sys.modules.items() if k.split(".")[0] in heads}
    for k in stashed:
        del sys.modules[k]
    finder = _AliasFinder()
    sys.meta_path.insert(0, finder)
    old_dwb = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # never write __pycache__ next to reference files
    try:
        yield
    finally:
        sys.dont_write_bytecode = old_dwb
        sys.meta_path.remove(finder)
        for k in [k for k in sys.modules if k.split(".")[0] in heads]:
            del sys.modules[k]  # drop the aliases (the private names keep the modules alive)
        sys.modules.update(stashed)
        importlib.invalidate_caches()


def _make_package(root: Path) -> None:
    if PKG in sys.modules:
        return
    pkg = types.ModuleType(PKG, "iLoRA reference checkout (read in place; see parity/shims/ilora.py)")
    pkg.__path__ = [str(root)]
    pkg.__package__ = PKG
    pkg.__spec__ = importlib.util.spec_from_loader(PKG, None, is_package=True)
    pkg.__spec__.submodule_search_locations = [str(root)]
    sys.modules[PKG] = pkg


# ----------------------------------------------------------------------------------------------- bridges
_ArgSpec = namedtuple("ArgSpec", "args varargs keywords defaults")


class _InspectProxy(types.ModuleType):
    """`inspect` for reference modules: adds getargspec (removed in Python 3.11) on top of the real module."""

    def __init__(self):
        super().__init__("inspect")

    def __getattr__(self, name):
        return getattr(_inspect, name)

    @staticmethod
    def getargspec(func):
        s = _inspect.getfullargspec(func)
        return _ArgSpec(s.args, s.varargs, s.varkw, s.defaults)


class _TorchProxy(types.ModuleType):
    """`torch` for model_interface.py: every attribute is torch's except load (rec_model checkpoints)."""

    def __init__(self, loader):
        super().__init__("torch")
        self._loader = loader

    def __getattr__(self, name):
        import torch

        return getattr(torch, name)

    def load(self, f, map_location=None, **kwargs):
        return self._loader(f)


class _LlamaProxy:
    """`LlamaForCausalLM` for model_interface.py:318-319.

    * resize_token_embeddings: transformers 4.28 initialised added rows with ``_init_weights``
      (normal(0, initializer_range)); transformers>=4.46 defaults to ``mean_resizing=True`` (samples from the
      old rows' mean/covariance). The returned model's method defaults to ``mean_resizing=False`` = 4.28.
    * dtype: while ``build_minterface(dtype=...)`` runs, that dtype replaces the hardcoded bfloat16.
    """

    dtype = None  # set by build_minterface for the duration of one build

    def __init__(self, cls):
        self._cls = cls

    def __getattr__(self, name):
        return getattr(self._cls, name)

    def from_pretrained(self, path, *args, torch_dtype=None, **kwargs):
        dtype = _LlamaProxy.dtype if _LlamaProxy.dtype is not None else torch_dtype
        model = self._cls.from_pretrained(path, *args, dtype=dtype, **kwargs)
        orig = model.resize_token_embeddings

        def resize_token_embeddings(new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=False):
            return orig(new_num_tokens, pad_to_multiple_of, mean_resizing=mean_resizing)

        model.resize_token_embeddings = resize_token_embeddings
        return model


def _strict_print(*args, **kwargs):
    # moelora.py:797-799 catches every exception in Linear.forward, prints it and returns zeros_like(x).
    # While strict (default), re-raise the swallowed exception instead of silently returning zeros.
    exc = sys.exc_info()[1]
    if _STRICT["on"] and exc is not None and args and str(args[0]).startswith("An error occurred"):
        raise RuntimeError(
            "iLoRA reference moelora.py:797 Linear.forward swallowed an exception (would return zeros); "
            "use parity.shims.ilora.moelora_strict(False) to get the reference's silent zeros") from exc
    print(*args, **kwargs)


@contextlib.contextmanager
def moelora_strict(flag: bool):
    """Temporarily choose whether MoE-LoRA Linear.forward errors raise (True) or return zeros as in the ref."""
    old = _STRICT["on"]
    _STRICT["on"] = flag
    try:
        yield
    finally:
        _STRICT["on"] = old


class _RefUnpickler(pickle.Unpickler):
    """Unpickler for rec_model/*.pt: names recorded by the reference's training script -> loaded classes."""

    mapping: dict = {}

    def find_class(self, module, name):
        target = self.mapping.get((module, name)) or self.mapping.get((module, None))
        if target is not None:
            return getattr(target, name) if isinstance(target, types.ModuleType) else target
        return super().find_class(module, name)


def _make_rec_loader(recommender, sasrec_modules):
    import numpy as np

    _RefUnpickler.mapping = {
        ("__main__", "SASRec"): recommender.SASRec,
        ("__main__", "GRU"): recommender.GRU,
        ("__main__", "Caser"): recommender.Caser,
        ("SASRecModules_ori", None): sasrec_modules,
        # numpy 2 moved numpy.core -> numpy._core (pickles name numpy.core.multiarray.scalar)
        ("numpy.core.multiarray", None): importlib.import_module("numpy._core.multiarray"),
    }
    pickle_module = types.SimpleNamespace(Unpickler=_RefUnpickler, load=pickle.load, __name__="ref_pickle")

    def load_rec_model(path, device: str = "cpu"):
        """Unpickle a reference rec_model/*.pt (a whole nn.Module) onto CPU (mode as pickled: train).

        ``device`` replaces the pickled ``.device`` attribute ('cuda:0'), which SASRec.forward/cacul_h
        use for ``torch.arange(...).to(self.device)`` (A_SASRec_final_bce_llm.py:174, 203-208).
        """
        import torch

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: iLoRA rec_model checkpoint not found (expected a pickled SASRec .pt)")
        model = torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{path}: expected a pickled torch.nn.Module, got {type(model).__name__}")
        for m in model.modules():
            if "device" in vars(m):
                m.device = torch.device(device)
        return model

    del np
    return load_rec_model


# ------------------------------------------------------------------------------------------------- load()
_MODULES = [
    "SASRecModules_ori",
    "recommender.A_SASRec_final_bce_llm",
    "model.router.nlpr",
    "model.router.cvr",
    "model.mlp_projector",
    "model.peft",
    "model.peft.tuners.moelora",
    "model.peft.tuners.gating",
    "optims",
]
_MODULES_IFACE = ["model.model_interface", "data.data_interface", "data.lastfm_data"]


def load() -> types.SimpleNamespace:
    """Import the iLoRA reference once (per process) and return the namespace described in the module doc."""
    global _NS
    with _lock:
        if _NS is not None:
            return _NS
        root = _ref_root()
        # heavy third-party imports first, outside the alias window, so none of them sees the alias
        import accelerate  # noqa: F401
        import huggingface_hub  # noqa: F401
        import pytorch_lightning  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import transformers.modeling_outputs  # noqa: F401
        import transformers.pytorch_utils  # noqa: F401

        _make_package(root)
        mods: dict[str, types.ModuleType] = {}
        with _reference_import_scope():
            for name in _MODULES + _MODULES_IFACE:
                mods[name] = importlib.import_module(f"{PKG}.{name}")
        load_rec = _make_rec_loader(mods["recommender.A_SASRec_final_bce_llm"], mods["SASRecModules_ori"])

        # bridges, module-local (never touch the real torch/inspect modules)
        mi = mods["model.model_interface"]
        mi.inspect = _InspectProxy()  # BRIDGES["getargspec"]
        mi.torch = _TorchProxy(load_rec)  # BRIDGES["rec_checkpoint"]
        mi.LlamaForCausalLM = _LlamaProxy(mi.LlamaForCausalLM)  # BRIDGES["resize_init"], ["llm_dtype"]
        mods["data.data_interface"].inspect = _InspectProxy()  # BRIDGES["getargspec"]
        mods["model.peft.tuners.moelora"].print = _strict_print  # BRIDGES["moelora_strict"]

        rec = mods["recommender.A_SASRec_final_bce_llm"]
        nlpr, cvr = mods["model.router.nlpr"], mods["model.router.cvr"]
        ml, gating = mods["model.peft.tuners.moelora"], mods["model.peft.tuners.gating"]
        di = mods["data.data_interface"]
        ns = types.SimpleNamespace(
            root=root,
            modules=mods,
            BRIDGES=BRIDGES,
            # recommenders
            SASRec=rec.SASRec, GRU=rec.GRU, Caser=rec.Caser, extract_axis_1=rec.extract_axis_1,
            MultiHeadAttention=mods["SASRecModules_ori"].MultiHeadAttention,
            PositionwiseFeedForward=mods["SASRecModules_ori"].PositionwiseFeedForward,
            load_rec_model=load_rec,
            # routers / gating
            nlpr=nlpr, NLPRecommendationRouter=nlpr.NLPRecommendationRouter, ResidualBlock=nlpr.ResidualBlock,
            GateFunction=nlpr.GateFunction, LambdaLayer=nlpr.LambdaLayer, build_router=nlpr.build_router,
            cvr=cvr, CvrRouter=cvr.Router, CvrBlock=cvr.Block, build_cvr_router=cvr.build_router,
            gating=gating, GATING_TO_MODEL_MAPPING=gating.GATING_TO_MODEL_MAPPING,
            # MoE-LoRA + peft fork
            moelora=ml, MoeLoraConfig=ml.MoeLoraConfig, MoeLoraModel=ml.MoeLoraModel, MoeLoraLayer=ml.MoeLoraLayer,
            MoeLoraLinear=ml.Linear, mark_only_lora_as_trainable=ml.mark_only_lora_as_trainable,
            ref_peft=mods["model.peft"],
            # projector
            MlpProjector=mods["model.mlp_projector"].MlpProjector,
            # interface / data
            MInterface=mi.MInterface, DInterface=di.DInterface, TrainCollater=di.TrainCollater,
            LastfmData=mods["data.lastfm_data"].LastfmData,
            LinearWarmupCosineLRScheduler=mods["optims"].LinearWarmupCosineLRScheduler,
            # helpers
            lastfm_args=lastfm_args, build_minterface=build_minterface, build_data_module=build_data_module,
            build_lastfm_batch=build_lastfm_batch, TokenTypeBridge=TokenTypeBridge, moelora_strict=moelora_strict,
            attach_trainer=attach_trainer,
        )
        _NS = ns
        return ns


# ------------------------------------------------------------------------------------- args (main.py + .sh)
def _main_parser(root: Path) -> argparse.ArgumentParser:
    """Rebuild main.py's ArgumentParser from its AST (main.py:76-138): names, defaults, types, actions."""
    tree = ast.parse((root / "main.py").read_text())
    types_ = {"int": int, "float": float, "str": str, "list": list, "bool": bool}
    parser = argparse.ArgumentParser(prog="iLoRA main.py (reconstructed)")
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "parser"):
            continue
        names = [ast.literal_eval(a) for a in node.args]
        kw = {}
        for k in node.keywords:
            if k.arg == "type":
                kw["type"] = types_[k.value.id]
            else:
                kw[k.arg] = ast.literal_eval(k.value)
        parser.add_argument(*names, **kw)
    return parser


def _padding_item_id(data_dir: str, current: int) -> int:
    # main.py:142-147 sets padding_item_id from a substring of data_dir (movielens/steam/lastfm)
    for key, pid in (("movielens", 1682), ("steam", 3581), ("lastfm", 4606)):
        if key in data_dir:
            return pid
    return current


def lastfm_args(script: str = "train_lastfm.sh", **overrides: Any) -> argparse.Namespace:
    """Namespace main.py would build for ``sh <script>`` (defaults from main.py, flags from the script).

    Paths are made absolute and local: ``data_dir`` -> ../shared/data/ilora/lastfm (``RECPARITY_SHARED``),
    ``prompt_path``/``rec_model_path`` -> inside the checkout. ``overrides`` win over everything.
    """
    root = _ref_root()
    text = (root / script).read_text().replace("\\\n", " ")
    tokens = shlex.split(text)
    if tokens[:2] != ["python", "main.py"]:
        raise ValueError(f"{root / script}: expected 'python main.py ...', got {tokens[:2]}")
    args = _main_parser(root).parse_args(tokens[2:])
    shared = SHARED
    args.data_dir = str(shared / "data" / "ilora" / "lastfm")
    args.prompt_path = str(root / args.prompt_path)
    args.rec_model_path = str(root / args.rec_model_path)
    for k, v in overrides.items():
        setattr(args, k, v)
    args.padding_item_id = _padding_item_id(args.data_dir, args.padding_item_id)
    return args


# ----------------------------------------------------------------------------------------------- MInterface
def _combined_dir(llm_path: Path, tokenizer_path: Path) -> Path:
    """The reference loads model and tokenizer from one folder (model_interface.py:313,318): join them."""
    import hashlib

    key = hashlib.sha256(f"{llm_path.resolve()}|{tokenizer_path.resolve()}".encode()).hexdigest()[:16]
    out = cache_dir() / f"ilora-llm-{key}"
    out.mkdir(parents=True, exist_ok=True)
    for src in (tokenizer_path, llm_path):  # tokenizer files from tokenizer_path win over any in llm_path
        for f in src.iterdir():
            link = out / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return out


def _bridge_generate(llama) -> None:
    """BRIDGES["generate_kwargs"]: skip user_embeds/gate_weights in kwarg validation (debug/utils.py:1106)."""
    orig = llama._validate_model_kwargs

    def _validate_model_kwargs(model_kwargs):
        return orig({k: v for k, v in model_kwargs.items() if k not in ("user_embeds", "gate_weights", "domain_id")})

    llama._validate_model_kwargs = _validate_model_kwargs


def build_minterface(llm_path, tokenizer_path=None, *, seed: int | None = 1234, dtype=None, **overrides):
    """Build the reference ``MInterface`` as main.py:40-41 does, around a local LLM folder.

    ``llm_path``: folder with a LlamaForCausalLM (config + weights); ``tokenizer_path``: folder with the
    tokenizer if it is not in ``llm_path``. ``seed``: ``pl.seed_everything`` first (main.py:40, default
    1234; None skips). ``dtype``: cast the built module (the reference hardcodes bfloat16,
    model_interface.py:318). ``overrides``: hparams over ``lastfm_args()`` (e.g. ``router='share'``).
    Returns the MInterface in train mode, with the generate bridge applied.
    """
    import pytorch_lightning as pl
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only, never the hub
    ns = load()
    llm_path = Path(llm_path)
    if not (llm_path / "config.json").is_file():
        raise FileNotFoundError(f"{llm_path}/config.json: llm_path must be a saved LlamaForCausalLM folder")
    if tokenizer_path is not None and Path(tokenizer_path).resolve() != llm_path.resolve():
        llm_path = _combined_dir(llm_path, Path(tokenizer_path))
    args = lastfm_args(llm_path=str(llm_path), **overrides)
    if not isinstance(dtype, (type(None), torch.dtype)):
        raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
    if seed is not None:
        pl.seed_everything(seed, verbose=False)
    _LlamaProxy.dtype = dtype
    try:
        with contextlib.redirect_stdout(_Quiet()):
            model = ns.MInterface(**vars(args))
    finally:
        _LlamaProxy.dtype = None
    llama = model.llama_model.base_model.model  # PeftModelForCausalLM -> MoeLoraModel -> LlamaForCausalLM
    _bridge_generate(llama)
    if dtype is not None:
        model.to(dtype)  # projector, router, rec_model, LoRA/gating weights (the Llama already is)
    return model


def attach_trainer(model, max_steps: int, global_step: int = 0, current_epoch: int = 0):
    """Give a bare MInterface the few Trainer fields its methods read (configure_optimizers reads
    ``trainer.max_steps``, model_interface.py:247; training_step's scheduler reads ``global_step``,
    ``current_epoch``, model_interface.py:136). For a real loop use a pl.Trainer instead."""
    model._trainer = types.SimpleNamespace(max_steps=max_steps, global_step=global_step,
                                           current_epoch=current_epoch)
    return model


class _Quiet:
    """Swallow the reference's progress prints (model_interface.py:312, 382, 407, 412 ...)."""

    def write(self, s):
        return len(s)

    def flush(self):
        pass


# ----------------------------------------------------------------------------------------------- data
class TokenTypeBridge:
    """Tokenizer wrapper for the reference collater: BRIDGES["token_type_ids"].

    transformers 4.28's slow LlamaTokenizer (which the reference was written against) built pair inputs as
    ``<s> A <s> B`` with token_type_ids ``[0]*(len(A)+2) + [1]*(len(B)+1)``: one longer than input_ids,
    which model_interface.py:42 compensates with ``[:, 1:]``. Today's tokenizer returns them aligned
    (``[0]*(len(A)+1) + [1]*(len(B)+1)``); prepending one 0 column restores the 4.28 layout exactly.
    Everything else is delegated to the wrapped tokenizer.
    """

    def __init__(self, tokenizer):
        self._tok = tokenizer

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, *args, **kwargs):
        out = self._tok(text, *args, **kwargs)
        pair = isinstance(text, (list, tuple)) and len(text) > 0 and isinstance(text[0], (list, tuple))
        if pair and "token_type_ids" in out:
            import torch

            tt = out["token_type_ids"]
            if not isinstance(tt, torch.Tensor):
                raise TypeError("TokenTypeBridge expects return_tensors='pt' (as data_interface.py:77)")
            if tt.shape != out["input_ids"].shape:
                raise ValueError(f"token_type_ids {tuple(tt.shape)} vs input_ids {tuple(out['input_ids'].shape)}: "
                                 "tokenizer already misaligned; bridge would double-shift")
            out["token_type_ids"] = torch.cat([tt.new_zeros(tt.shape[0], 1), tt], dim=1)
        return out


def build_data_module(tokenizer, *, bridge_token_types: bool = True, **overrides):
    """The reference ``DInterface`` for LastFM (main.py:48) with ``lastfm_args()`` hparams.

    ``tokenizer``: the MInterface's ``llama_tokenizer`` (wrapped in TokenTypeBridge unless
    ``bridge_token_types=False``). ``num_workers`` keeps main.py's 8 for ``max_steps``
    (data_interface.py:135), then is set to 0 so loaders run in-process.
    """
    ns = load()
    args = vars(lastfm_args(**overrides))
    args.pop("llm_tokenizer", None)
    for f in ("id2name.txt", "train_data.df", "Val_data.df", "Test_data.df"):
        if not (Path(args["data_dir"]) / f).is_file():
            raise FileNotFoundError(f"{Path(args['data_dir']) / f}: LastFM data for the iLoRA data module not "
                                    "found (expected ../shared/data/ilora/lastfm, or set RECPARITY_SHARED / data_dir=)")
    if not Path(args["prompt_path"]).is_file():
        # data_interface.py:190 would silently fall back to an empty prompt list, then fail in random.choice
        raise FileNotFoundError(f"{args['prompt_path']}: prompt file not found")
    tok = TokenTypeBridge(tokenizer) if bridge_token_types else tokenizer
    with contextlib.redirect_stdout(_Quiet()):
        dm = ns.DInterface(llm_tokenizer=tok, **args)
    dm.num_workers = 0  # BRIDGES["dinterface_workers"]
    return dm


def build_lastfm_batch(tokenizer, *, stage: str = "train", batch_size: int = 4, seed: int = 0,
                       indices=None, mode: str | None = "emb", data_module=None, **overrides) -> dict:
    """One LastFM batch made by the reference's own dataset (lastfm_data.py) and collater (data_interface.py).

    ``stage``: 'train' (prompt + answer pair, data_interface.py:71-90) or 'val'/'test' (prompt only,
    with correct_answer / cans_name). ``seed`` seeds python ``random`` (negative sampling
    lastfm_data.py:45, prompt choice + curriculum data_interface.py:32,39). ``indices``: dataset rows
    (default: the first ``batch_size``). ``mode`` (train only): 'emb' forces the embedding prompt
    ([HistoryEmb]/[CansEmb], flag False), 'ph' the text-only [PH] prompt (flag True), None keeps the
    reference's curriculum draw at its first step.
    """
    if stage not in ("train", "val", "test"):
        raise ValueError(f"stage must be train/val/test, got {stage!r}")
    if mode not in ("emb", "ph", None):
        raise ValueError(f"mode must be 'emb', 'ph' or None, got {mode!r}")
    dm = data_module or build_data_module(tokenizer, **overrides)
    dataset = {"train": dm.trainset, "val": dm.valset, "test": dm.testset}[stage]
    if indices is None:
        indices = list(range(batch_size))
    if len(indices) == 0:
        raise ValueError("build_lastfm_batch: indices/batch_size must select at least one row")
    bad = [i for i in indices if not 0 <= int(i) < len(dataset)]
    if bad:
        raise IndexError(f"build_lastfm_batch: rows {bad} outside LastFM {stage} set of {len(dataset)}")
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[stage]()
    collate = loader.collate_fn
    if stage == "train" and mode is not None:
        # thresh_hold = cur_step / max_step (data_interface.py:38): >= 1 always picks the embedding prompt
        # ('ph': thresh 0 -> `p < 0` never holds -> the [PH] branch, flag True)
        collate.cur_step = collate.max_step if mode == "emb" else 0
    state = random.getstate()
    random.seed(seed)
    try:
        samples = [dataset[int(i)] for i in indices]
        batch = collate(samples)
    finally:
        random.setstate(state)
    return batch
