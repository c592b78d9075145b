"""Parity: the shared router (``--router share``) and every gating / router variant the reference offers.

Reference (through ``parity.refs.ilora()``): model/router/nlpr.py:6-84 (the router MInterface builds,
model_interface.py:30-31, called at :47-48), model/router/cvr.py:1-73 (never used by MInterface) and
model/peft/tuners/gating.py:5-124 (built per MoE-LoRA layer, moelora.py:604-606).
Reimpl: reimpl/ilora/router.py, reimpl/ilora/gating.py.

Weights are seeded normal draws carried in the inputs (BatchNorm running statistics included, so eval
mode is not the trivial mean 0 / var 1); each case runs train mode (batch statistics, running-stat
update), eval mode and batch size 1.
"""

from __future__ import annotations

import numpy as np

from parity.case import Case, register

SEED = 2024
GATING_KINDS = ("Dense", "topK", "MLP", "Drop", "MLP_noise", "Noise")


def _random_state(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[f"w.{k}"] = np.array(3, dtype=np.int64)
        elif k.endswith("running_var"):
            out[f"w.{k}"] = rng.uniform(0.5, 2.0, size=s)
        elif k.endswith("running_mean"):
            out[f"w.{k}"] = rng.normal(0.0, 0.5, size=s)
        elif ".bn" in f".{k}" and k.endswith("weight"):
            out[f"w.{k}"] = rng.uniform(0.5, 1.5, size=s)
        else:
            out[f"w.{k}"] = rng.normal(0.0, 0.3, size=s)
    return out


def _state(inputs: dict) -> dict:
    import torch

    return {k[2:]: torch.as_tensor(v) for k, v in inputs.items() if k.startswith("w.")}


def _shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _run_router(model, inputs: dict, squeeze: bool) -> dict:
    """train (batch), state after the train forward, eval (batch), train and eval at batch size 1."""
    import torch

    def call(x):
        y = model(torch.as_tensor(x))
        return y[:, 0] if squeeze else y   # nlpr returns [B, 1, E]; compare as [B, E]

    out = {}
    with torch.no_grad():
        model.train()
        out["train.gate"] = call(inputs["x"])
        out.update({f"train.state.{k}": v.clone() for k, v in model.state_dict().items() if "running" in k})
        model.eval()
        out["eval.gate"] = call(inputs["x"])
        out["eval.gate_b1"] = call(inputs["x1"])
        model.train()
        out["train.gate_b1"] = call(inputs["x1"])
    return out


# ------------------------------------------------------------------------------------- nlpr (share)
# make_inputs never touches the reference (golden-only runs must regenerate inputs without a checkout):
# parameter names/shapes come from reimpl, whose state-dict layout equals the reference's (a mismatch
# would fail load_state_dict on the reference side, live or at `make golden`).
def make_inputs_share(seed: int) -> dict:
    from reimpl.ilora.router import RouterConfig, build_router

    rng = np.random.default_rng(seed)
    shapes = _shapes(build_router(RouterConfig(kind="share", num_moe=4)))
    return {"x": rng.normal(0, 1.0, size=(6, 1, 64)), "x1": rng.normal(0, 1.0, size=(1, 1, 64)),
            **_random_state(shapes, rng)}


def run_reference_share(inputs: dict) -> dict:
    import parity.refs

    m = parity.refs.ilora().build_router().double()
    m.load_state_dict(_state(inputs))
    return _run_router(m, inputs, squeeze=True)


def run_reimpl_share(inputs: dict, mode: str) -> dict:
    from reimpl.ilora.router import RouterConfig, build_router

    m = build_router(RouterConfig(kind="share", num_moe=4, mode=mode)).double()
    m.load_state_dict(_state(inputs))
    return _run_router(m, inputs, squeeze=False)


register(Case(
    name="ilora.router_share", system="iLoRA", component="gating",
    title="Shared router (nlpr.py, --router share): user state [B, 1, 64] -> gate [B, 4], train/eval/B=1",
    ref_lines=["model/router/nlpr.py:6-84", "model/model_interface.py:30-31", "model/model_interface.py:47-48"],
    reimpl_symbol="reimpl/ilora/router.py:NLPRouter",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs_share, run_reference=run_reference_share, run_reimpl=run_reimpl_share,
    description="1-D ResNet router with BatchNorm: train mode normalizes with batch statistics and updates "
                "the running statistics (compared too), eval mode uses them; batch size 1 works in both "
                "because each stage's signal has length >= 16. The reference output [B, 1, E] is compared "
                "as [B, E].",
))


# --------------------------------------------------------------------------------------------- cvr
def make_inputs_cvr(seed: int) -> dict:
    from reimpl.ilora.router import RouterConfig, build_router

    rng = np.random.default_rng(seed)
    shapes = _shapes(build_router(RouterConfig(kind="cvr", num_moe=3)))
    return {"x": rng.normal(0, 1.0, size=(3, 3, 8, 8)), "x1": rng.normal(0, 1.0, size=(1, 3, 8, 8)),
            "num_experts": 3, **_random_state(shapes, rng)}


def run_reference_cvr(inputs: dict) -> dict:
    import parity.refs

    m = parity.refs.ilora().build_cvr_router(num_experts=inputs["num_experts"]).double()
    m.load_state_dict(_state(inputs))
    return _run_router(m, inputs, squeeze=False)


def run_reimpl_cvr(inputs: dict, mode: str) -> dict:
    from reimpl.ilora.router import RouterConfig, build_router

    m = build_router(RouterConfig(kind="cvr", num_moe=inputs["num_experts"], mode=mode)).double()
    m.load_state_dict(_state(inputs))
    return _run_router(m, inputs, squeeze=False)


register(Case(
    name="ilora.router_cvr", system="iLoRA", component="gating",
    title="2-D conv router (cvr.py, unused by MInterface): image [B, 3, 8, 8] -> logits [B, 3]",
    ref_lines=["model/router/cvr.py:1-73"],
    reimpl_symbol="reimpl/ilora/router.py:CVRouter",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs_cvr, run_reference=run_reference_cvr, run_reimpl=run_reimpl_cvr,
    description="The other router file of the reference (BatchNorm2d, raw logits, no softmax); batch size 1 "
                "in train mode works because BatchNorm2d normalizes over B*H*W.",
))


# --------------------------------------------------------------------------------------- gating.py
def make_inputs_gating(seed: int) -> dict:
    from reimpl.ilora.gating import GatingConfig, build_gating

    rng = np.random.default_rng(seed)
    inp = {"x": rng.normal(0, 1.0, size=(5, 64)), "x1": rng.normal(0, 1.0, size=(1, 64)), "num_moe": 4,
           "torch_seed": seed}
    for kind in GATING_KINDS:
        shapes = _shapes(build_gating(GatingConfig(kind=kind, num_moe=4)))
        # larger spread for topK so the top-2 probabilities are far from uniform
        scale = 1.0 if kind == "topK" else 0.3
        for k, s in shapes.items():
            inp[f"{kind}.{k}"] = rng.normal(0.0, scale, size=s)
    return inp


def _gating_state(inputs: dict, kind: str) -> dict:
    import torch

    p = f"{kind}."
    return {k[len(p):]: torch.as_tensor(v) for k, v in inputs.items() if k.startswith(p)}


def _run_gatings(build, inputs: dict) -> dict:
    import torch

    out = {}
    with torch.no_grad():
        for kind in GATING_KINDS:
            m = build(kind).double()
            m.load_state_dict(_gating_state(inputs, kind))
            calls = [("", {})] + ([(".k2", {"topk": 2})] if kind == "topK" else [])
            for suffix, kw in calls:
                for train in (True, False):
                    m.train(train)
                    tag = "train" if train else "eval"
                    for xname in ("x", "x1"):
                        torch.manual_seed(inputs["torch_seed"])
                        out[f"{kind}{suffix}.{tag}.{xname}"] = m(torch.as_tensor(inputs[xname]), **kw)
    return out


def run_reference_gating(inputs: dict) -> dict:
    import parity.refs

    mapping = parity.refs.ilora().GATING_TO_MODEL_MAPPING
    return _run_gatings(lambda kind: mapping[kind](dim=64, num_moe=inputs["num_moe"]), inputs)


class _TopK2:
    """reimpl's TopK takes k from its config; route the reference's call-time ``topk=`` to a k=2 instance."""

    def __init__(self, k1, k2):
        self.k1, self.k2 = k1, k2

    def double(self):
        self.k1.double(), self.k2.double()
        return self

    def load_state_dict(self, sd):
        self.k1.load_state_dict(sd), self.k2.load_state_dict(sd)

    def train(self, flag):
        self.k1.train(flag), self.k2.train(flag)

    def __call__(self, x, topk=1):
        return (self.k1 if topk == 1 else self.k2)(x)


def run_reimpl_gating(inputs: dict, mode: str) -> dict:
    from reimpl.ilora.gating import GatingConfig, build_gating

    def build(kind):
        if kind == "topK":
            return _TopK2(build_gating(GatingConfig(kind=kind, num_moe=inputs["num_moe"], topk=1, mode=mode)),
                          build_gating(GatingConfig(kind=kind, num_moe=inputs["num_moe"], topk=2, mode=mode)))
        return build_gating(GatingConfig(kind=kind, num_moe=inputs["num_moe"], mode=mode))

    return _run_gatings(build, inputs)


register(Case(
    name="ilora.gating_variants", system="iLoRA", component="gating",
    title="Gating networks Dense/topK(k=1,2)/MLP/Drop/MLP_noise/Noise: [B, 64] -> [B, 4], train/eval/B=1",
    ref_lines=["model/peft/tuners/gating.py:5-124", "model/peft/tuners/moelora.py:604-606"],
    reimpl_symbol="reimpl/ilora/gating.py:build_gating",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs_gating, run_reference=run_reference_gating, run_reimpl=run_reimpl_gating,
    deviations=["ILORA-GATING-TOPK-RESOFTMAX", "ILORA-GATING-NOISE-IN-EVAL"],
    deviation_outputs={"ILORA-GATING-TOPK-RESOFTMAX": r"^topK\.k2\.",
                       "ILORA-GATING-NOISE-IN-EVAL": r"^(Noise|MLP_noise)\.eval\."},
    description="Each variant with the same torch seed before every call, so dropout (Drop, train) and "
                "Gaussian noise (Noise, MLP_noise, train *and* eval in the reference) draw identically. "
                "fixed differs on topK with k=2 (renormalized instead of re-softmaxed) and on the "
                "noisy variants in eval mode (no noise).",
))
