"""Parity: the MoE-LoRA tuner (gated mixture of LoRA experts) of the iLoRA teacher.

Reference (through ``parity.refs.ilora()``): model/peft/tuners/moelora.py -- ``Linear`` (:681-799),
``update_layer`` (:596-621), ``MoeLoraModel`` (:177-230, :351-412), ``mark_only_lora_as_trainable``
(:554-569) -- and the fork's ``get_peft_model`` / ``PeftModelForCausalLM.forward`` (model/peft).
Reimpl: reimpl/ilora/moe_lora.py.

* ``ilora.moe_lora_linear``: one layer, float64: gated output (eval), uniform gate, batch size 1,
  train mode (LoRA dropout, same seed) and the gradients of the LoRA weights.
* ``ilora.moe_lora_merge``: merge -> merged weight + output, unmerge -> weight (ILORA-MOELORA-MERGE-UNGATED).
* ``ilora.moe_lora_error_path``: the reference's swallowed errors (r % E != 0, gate of another batch size
  or expert count) return zeros shaped like the input; faithful reproduces them.
* ``ilora.moe_lora_llama``: a tiny random ``LlamaForCausalLM`` wrapped on all seven projections
  (model_interface.py:364-371): the seeded initial LoRA weights (init RNG order) and the logits/loss
  of a padded batch with per-sample gates, eval and train mode.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np

from parity.case import Case, register
from parity.cases.inputs import simplex

SEED = 2024
IN, OUT, R, E, ALPHA, DROP = 16, 24, 8, 4, 32, 0.25


def _ref_linear(ns, gate_list: list, r: int = R, e: int = E, drop: float = DROP):
    return ns.MoeLoraLinear("default", IN, OUT, r=r, num_moe=e, gating="Dense", global_user_embeds=[],
                            gate_weights=gate_list, lora_alpha=ALPHA, lora_dropout=drop, bias=True)


def _reimpl_linear(mode: str, r: int = R, e: int = E, drop: float = DROP):
    import torch

    from reimpl.ilora.moe_lora import MoeLoraConfig, MoeLoraLinear

    cfg = MoeLoraConfig(r=r, num_moe=e, lora_alpha=ALPHA, lora_dropout=drop, mode=mode)
    return MoeLoraLinear(torch.nn.Linear(IN, OUT, bias=True), cfg)


def _load(layer, inputs: dict, reference: bool) -> None:
    """Set the weights from the inputs; the reference names the base weight ``weight``, reimpl ``base_layer.weight``."""
    import torch

    from reimpl.ilora.moe_lora import to_reference_key

    own = layer.state_dict()
    sd = {}
    for k in own:
        src = k if reference else to_reference_key(k)
        sd[k] = torch.as_tensor(inputs[f"w.{src}"])
    layer.load_state_dict(sd)


def _weights(rng: np.random.Generator, r: int = R, e: int = E) -> dict:
    return {"w.weight": rng.normal(0, 0.3, (OUT, IN)), "w.bias": rng.normal(0, 0.3, (OUT,)),
            "w.lora_A.default.weight": rng.normal(0, 0.3, (r, IN)),
            "w.lora_B.default.weight": rng.normal(0, 0.3, (OUT, r)),
            "w.gating.default.linear_layer.weight": rng.normal(0, 0.3, (e, 64))}


# ---------------------------------------------------------------------------------------- one layer
def make_inputs_linear(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    b, l = 3, 5
    return {"x": rng.normal(0, 1, (b, l, IN)), "gate": simplex(rng, (b, E)),
            "x1": rng.normal(0, 1, (1, 2, IN)), "gate1": simplex(rng, (1, E)),
            "probe": rng.normal(0, 1, (b, l, OUT)), "torch_seed": seed, **_weights(rng)}


def _run_linear(layer, call, inputs: dict) -> dict:
    import torch

    x, g = torch.as_tensor(inputs["x"]), torch.as_tensor(inputs["gate"])
    out = {}
    layer.eval()
    with torch.no_grad():
        out["eval.y"] = call(x, g)
        out["eval.y_uniform"] = call(x, torch.full_like(g, 1.0 / E))
        out["eval.y_b1"] = call(torch.as_tensor(inputs["x1"]), torch.as_tensor(inputs["gate1"]))
    layer.train()
    torch.manual_seed(inputs["torch_seed"])
    y = call(x, g)
    out["train.y"] = y.detach().clone()
    (y * torch.as_tensor(inputs["probe"])).sum().backward()
    for name in ("lora_A", "lora_B"):
        out[f"train.grad.{name}"] = getattr(layer, name)["default"].weight.grad.clone()
    return out


def _ref_layer_and_call(inputs: dict, dtype: str = "float64"):
    """The reference layer (weights from the inputs) and ``call(x, gate)``, which hands the gate to it the
    way MoeLoraModel.forward does: through the shared list the layer reads."""
    import parity.refs

    gl: list = []
    layer = _ref_linear(parity.refs.ilora(), gl)
    layer = layer.double() if dtype == "float64" else layer
    _load(layer, inputs, reference=True)

    def call(x, g):
        gl.clear()
        gl.append(g.unsqueeze(1))   # the router's [B, 1, E] (nlpr.py:80), as MoeLoraModel.forward stores it
        return layer(x)

    return layer, call


def run_reference_linear(inputs: dict) -> dict:
    layer, call = _ref_layer_and_call(inputs)
    return _run_linear(layer, call, inputs)


def run_reimpl_linear(inputs: dict, mode: str) -> dict:
    layer = _reimpl_linear(mode).double()
    _load(layer, inputs, reference=False)
    return _run_linear(layer, lambda x, g: layer(x, g), inputs)


register(Case(
    name="ilora.moe_lora_linear", system="iLoRA", component="moe_lora",
    title="MoE-LoRA Linear (r 8, 4 experts, alpha 32 -> scaling 16, dropout 0.25): output, uniform gate, "
          "B=1, train dropout, LoRA gradients",
    ref_lines=["model/peft/tuners/moelora.py:681-799", "model/peft/tuners/moelora.py:596-621"],
    reimpl_symbol="reimpl/ilora/moe_lora.py:MoeLoraLinear",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs_linear, run_reference=run_reference_linear, run_reimpl=run_reimpl_linear,
    description="The reference layer reads the gate from the list MoeLoraModel fills per call; reimpl gets "
                "it as an argument. Weights (base, bias, lora_A, lora_B non-zero) come from the inputs. "
                "Train mode draws the LoRA dropout mask from the same seed. Gradients of a fixed probe "
                "<y, P> with respect to lora_A and lora_B are compared.",
))


# ------------------------------------------------------------------------------------ float32 layer
SHAPES_F32 = [(3, 5), (1, 2), (2, 7), (1, 1)]  # (B, L): B = 1 twice, L = 1 once


def make_inputs_linear_f32(seed: int) -> dict:
    rng = np.random.default_rng(seed + 5)
    out = {"torch_seed": seed}
    for i, (b, l) in enumerate(SHAPES_F32):
        out[f"x{i}"] = rng.normal(0, 1, (b, l, IN)).astype(np.float32)
        out[f"gate{i}"] = simplex(rng, (b, E)).astype(np.float32)
    out["probe"] = rng.normal(0, 1, (*SHAPES_F32[0], OUT)).astype(np.float32)
    out.update({k: v.astype(np.float32) for k, v in _weights(rng).items()})  # lora_B non-zero
    return out


def _run_linear_f32(layer, call, inputs: dict) -> dict:
    import torch

    out = {}
    layer.eval()
    with torch.no_grad():
        for i in range(len(SHAPES_F32)):
            out[f"eval.y{i}"] = call(torch.as_tensor(inputs[f"x{i}"]), torch.as_tensor(inputs[f"gate{i}"]))
    layer.train()
    torch.manual_seed(inputs["torch_seed"])
    y = call(torch.as_tensor(inputs["x0"]), torch.as_tensor(inputs["gate0"]))
    out["train.y"] = y.detach().clone()
    (y * torch.as_tensor(inputs["probe"])).sum().backward()
    for name in ("lora_A", "lora_B"):
        out[f"train.grad.{name}"] = getattr(layer, name)["default"].weight.grad.clone()
    return out


def run_reference_linear_f32(inputs: dict) -> dict:
    layer, call = _ref_layer_and_call(inputs, dtype="float32")
    return _run_linear_f32(layer, call, inputs)


def run_reimpl_linear_f32(inputs: dict, mode: str) -> dict:
    layer = _reimpl_linear(mode)
    _load(layer, inputs, reference=False)
    return _run_linear_f32(layer, lambda x, g: layer(x, g), inputs)


register(Case(
    name="ilora.moe_lora_linear_f32", system="iLoRA", component="moe_lora",
    title="MoE-LoRA Linear in float32 (the dtype training runs in): 4 shapes incl. B=1, non-zero lora_B, "
          "train dropout, LoRA gradients",
    ref_lines=["model/peft/tuners/moelora.py:750-753", "model/peft/tuners/moelora.py:755-799"],
    reimpl_symbol="reimpl/ilora/moe_lora.py:MoeLoraLinear._delta",
    seed=SEED, dtype="float32",
    make_inputs=make_inputs_linear_f32, run_reference=run_reference_linear_f32,
    run_reimpl=run_reimpl_linear_f32, deviations=["ILORA-MOELORA-MIX-ORDER"],
    description="The reference applies lora_B to every expert (einsum over [E, r/E, out], calculate_B) and "
                "then sums the experts under the gate; in float32 that rounds differently from mixing the "
                "experts before lora_B, so faithful keeps the reference's order and fixed mixes first.",
))


# -------------------------------------------------------------------------------------------- merge
def make_inputs_merge(seed: int) -> dict:
    rng = np.random.default_rng(seed + 1)
    b, l = 2, 4
    return {"x": rng.normal(0, 1, (b, l, IN)), "gate": simplex(rng, (b, E)),
            "merge_gate": simplex(rng, (E,)), **_weights(rng)}


def _run_merge(layer, call, merge, inputs: dict) -> dict:
    import torch

    layer.eval()
    out = {}
    with torch.no_grad():
        merge()
        out["merged.weight"] = layer.weight.detach().clone()
        out["merged.y"] = call(torch.as_tensor(inputs["x"]), torch.as_tensor(inputs["gate"]))
        layer.unmerge()
        out["unmerged.weight"] = layer.weight.detach().clone()
        out["unmerged.y"] = call(torch.as_tensor(inputs["x"]), torch.as_tensor(inputs["gate"]))
    return out


def run_reference_merge(inputs: dict) -> dict:
    layer, call = _ref_layer_and_call(inputs)
    return _run_merge(layer, call, layer.merge, inputs)


def run_reimpl_merge(inputs: dict, mode: str) -> dict:
    import torch

    layer = _reimpl_linear(mode).double()
    _load(layer, inputs, reference=False)
    gate = torch.as_tensor(inputs["merge_gate"])
    return _run_merge(layer, lambda x, g: layer(x, g), lambda: layer.merge(gate if mode == "fixed" else None),
                      inputs)


register(Case(
    name="ilora.moe_lora_merge", system="iLoRA", component="moe_lora",
    title="MoE-LoRA merge/unmerge: merged weight and output, weight after unmerge",
    ref_lines=["model/peft/tuners/moelora.py:718-748", "model/peft/tuners/moelora.py:790-791"],
    reimpl_symbol="reimpl/ilora/moe_lora.py:MoeLoraLinear.merge",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs_merge, run_reference=run_reference_merge, run_reimpl=run_reimpl_merge,
    deviations=["ILORA-MOELORA-MERGE-UNGATED"],
    description="The reference merges B @ A * scaling (all experts, weight 1 each) and a merged layer ignores "
                "the gate. fixed merges one gate vector (inputs['merge_gate']) instead, so merged weight "
                "and output differ; after unmerge both modes restore the base weight.",
))


# ---------------------------------------------------------------------------------------- error path
def make_inputs_error(seed: int) -> dict:
    rng = np.random.default_rng(seed + 2)
    b, l = 2, 3
    return {"x": rng.normal(0, 1, (b, l, IN)), "gate": simplex(rng, (b, E)),
            "gate_b3": simplex(rng, (3, E)), "gate_e3": simplex(rng, (b, 3)),
            "r6.w.weight": rng.normal(0, 0.3, (OUT, IN)), "r6.w.bias": rng.normal(0, 0.3, (OUT,)),
            "r6.w.lora_A.default.weight": rng.normal(0, 0.3, (6, IN)),
            "r6.w.lora_B.default.weight": rng.normal(0, 0.3, (OUT, 6)),
            "r6.w.gating.default.linear_layer.weight": rng.normal(0, 0.3, (E, 64)),
            **_weights(rng)}


def _sub(inputs: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in inputs.items() if k.startswith(prefix)}


def _run_error(build_r6, build_r8, inputs: dict) -> dict:
    import torch

    x = torch.as_tensor(inputs["x"])
    out = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        l6, call6 = build_r6()
        l6.eval()
        out["r6.y"] = call6(x, torch.as_tensor(inputs["gate"]))           # reshape(B, L, 4, -1) of 6 fails
        l8, call8 = build_r8()
        l8.eval()
        out["gate_b3.y"] = call8(x, torch.as_tensor(inputs["gate_b3"]))  # batch 3 vs 2: no broadcast
        out["gate_e3.y"] = call8(x, torch.as_tensor(inputs["gate_e3"]))  # 3 gates vs 4 experts
    return out


def run_reference_error(inputs: dict) -> dict:
    import parity.refs

    ns = parity.refs.ilora()

    def build(r, w):
        gl: list = []
        layer = _ref_linear(ns, gl, r=r, drop=0.0).double()
        _load(layer, w, reference=True)

        def call(x, g):
            gl.clear()
            gl.append(g.unsqueeze(1))
            return layer(x)
        return layer, call

    # the reference's own behaviour: print + zeros_like(x) (its prints are silenced here)
    with ns.moelora_strict(False), contextlib.redirect_stdout(io.StringIO()):
        return _run_error(lambda: build(6, _sub(inputs, "r6.")), lambda: build(R, inputs), inputs)


def run_reimpl_error(inputs: dict, mode: str) -> dict:
    def build(r, w):
        layer = _reimpl_linear(mode, r=r, drop=0.0).double()
        _load(layer, w, reference=False)
        return layer, lambda x, g: layer(x, g)

    return _run_error(lambda: build(6, _sub(inputs, "r6.")), lambda: build(R, inputs), inputs)


register(Case(
    name="ilora.moe_lora_error_path", system="iLoRA", component="moe_lora",
    title="MoE-LoRA swallowed errors: r=6 with 4 experts, gate batch 3 vs 2, 3 gates vs 4 experts -> zeros_like(x)",
    ref_lines=["model/peft/tuners/moelora.py:763-799", "model/peft/tuners/moelora.py:618"],
    reimpl_symbol="reimpl/ilora/moe_lora.py:MoeLoraLinear.forward",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs_error, run_reference=run_reference_error, run_reimpl=run_reimpl_error,
    description="Faithful only: the reference (with the loader's strict re-raise switched off) prints the "
                "exception and returns torch.zeros_like(x), shaped [B, L, in] not [B, L, out]. mode='fixed' "
                "raises ValueError on each of these inputs instead (ILORA-MOELORA-SWALLOW-ERRORS, declared "
                "with an effect_note), so this case is not run in fixed mode.",
))


# -------------------------------------------------------------------------------------- tiny Llama
_LLAMA = {"vocab_size": 256, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 48, "num_hidden_layers": 2}


def _tiny_llama():
    from reimpl.llm.tiny import tiny_llama

    return tiny_llama(seed=0, **_LLAMA)


def make_inputs_llama(seed: int) -> dict:
    rng = np.random.default_rng(seed + 3)
    b, t = 3, 7
    ids = rng.integers(3, _LLAMA["vocab_size"], size=(b, t))
    mask = np.ones((b, t), dtype=np.int64)
    mask[1, 5:] = 0            # right padding, as the reference collater (padding_side right)
    mask[2, 3:] = 0
    labels = np.where(mask == 1, ids, -100)
    inp = {"input_ids": ids.astype(np.int64), "attention_mask": mask, "labels": labels.astype(np.int64),
           "gate": simplex(rng, (b, E)), "user_embeds": rng.normal(0, 1, (b, 1, 64)),
           "torch_seed": seed, "init_seed": seed + 7}
    for k, v in _tiny_llama().state_dict().items():   # base weights travel in the inputs
        inp[f"base.{k}"] = v.double().numpy()
    lora_rng = np.random.default_rng(seed + 4)
    for layer in range(_LLAMA["num_hidden_layers"]):
        for mod, (i, o) in _llama_shapes().items():
            key = f"model.layers.{layer}.{mod}"
            inp[f"lora.{key}.lora_A.default.weight"] = lora_rng.normal(0, 0.2, (R, i))
            inp[f"lora.{key}.lora_B.default.weight"] = lora_rng.normal(0, 0.2, (o, R))
    return inp


def _llama_shapes() -> dict[str, tuple[int, int]]:
    h, f = _LLAMA["hidden_size"], _LLAMA["intermediate_size"]
    kv = h // _LLAMA["num_attention_heads"] * _LLAMA["num_key_value_heads"]
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (h, f), "mlp.up_proj": (h, f), "mlp.down_proj": (f, h)}


def _base_state(inputs: dict) -> dict:
    import torch

    return {k[5:]: torch.as_tensor(v) for k, v in inputs.items() if k.startswith("base.")}


def _run_llama(model, llama, forward, inputs: dict, init: dict) -> dict:
    """``init``: LoRA weights right after the seeded wrap (float32, before any load)."""
    import torch

    out = {f"init.{k}": v for k, v in init.items()}
    model.double()
    with torch.no_grad():
        for name, p in llama.named_parameters():
            key = name.replace(".base_layer.", ".")
            if "lora_" in key:
                p.copy_(torch.as_tensor(inputs[f"lora.{key}"]))
    kw = {k: torch.as_tensor(inputs[k]) for k in ("input_ids", "attention_mask", "labels")}
    gate = torch.as_tensor(inputs["gate"])
    model.eval()
    with torch.no_grad():
        res = forward(gate, **kw)
        out["eval.logits"], out["eval.loss"] = res.logits, res.loss
        res = forward(torch.full_like(gate, 1.0 / E), **kw)
        out["eval.logits_uniform"] = res.logits
        model.train()
        torch.manual_seed(inputs["torch_seed"])
        res = forward(gate, **kw)
        out["train.logits"], out["train.loss"] = res.logits, res.loss
    return out


def _init_lora(llama) -> dict:
    return {n.replace(".base_layer.", "."): p.detach().clone()
            for n, p in llama.named_parameters() if "lora_A" in n}


def run_reference_llama(inputs: dict) -> dict:
    import torch

    import parity.refs

    ns = parity.refs.ilora()
    llama = _tiny_llama()
    llama.load_state_dict(_base_state(inputs))
    cfg = ns.MoeLoraConfig(task_type="CAUSAL_LM", inference_mode=False, r=R, lora_alpha=ALPHA, lora_dropout=DROP,
                           target_modules=["k_proj", "v_proj", "q_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"], num_moe=E, gating="Dense")   # model_interface.py:364-371
    torch.manual_seed(inputs["init_seed"])
    pm = ns.ref_peft.get_peft_model(llama, cfg)
    init = _init_lora(llama)
    user = torch.as_tensor(inputs["user_embeds"])

    def forward(gate, **kw):   # as MInterface.forward (model_interface.py:47-57)
        return pm(**kw, return_dict=True, use_cache=False, user_embeds=user, gate_weights=gate.unsqueeze(1))

    return _run_llama(pm, llama, forward, inputs, init)


def run_reimpl_llama(inputs: dict, mode: str) -> dict:
    import torch

    from reimpl.ilora.moe_lora import MoeLoraConfig, wrap_moe_lora

    llama = _tiny_llama()
    llama.load_state_dict(_base_state(inputs))
    torch.manual_seed(inputs["init_seed"])
    mm = wrap_moe_lora(llama, MoeLoraConfig(r=R, num_moe=E, lora_alpha=ALPHA, lora_dropout=DROP, mode=mode))
    init = _init_lora(llama)

    def forward(gate, **kw):
        return mm(**kw, return_dict=True, use_cache=False, gate_weights=gate)

    return _run_llama(mm, llama, forward, inputs, init)


register(Case(
    name="ilora.moe_lora_llama", system="iLoRA", component="moe_lora",
    title="MoE-LoRA on a tiny LlamaForCausalLM (7 projections x 2 layers): seeded init, logits and LM loss "
          "with per-sample gates, eval and train",
    ref_lines=["model/model_interface.py:357-373", "model/model_interface.py:47-57",
               "model/peft/tuners/moelora.py:177-230", "model/peft/tuners/moelora.py:351-412",
               "model/peft/tuners/moelora.py:596-621"],
    reimpl_symbol="reimpl/ilora/moe_lora.py:wrap_moe_lora",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs_llama, run_reference=run_reference_llama, run_reimpl=run_reimpl_llama,
    deviations=["ILORA-MOELORA-DEAD-GATING"],
    xplat_atol=2e-7,
    xplat_note="Measured drift of the reference between kernel sets (parity/drift.json): max abs 1.5e-8 "
               "(transformers runs RMSNorm and the LM loss in float32 even in a float64 model); atol = 10x "
               "that, rounded up.",
    description="Reference: get_peft_model of the vendored fork with MInterface's MoeLoraConfig, called as "
                "MInterface.forward does (gate [B, 1, E] and user_embeds as kwargs). Reimpl: wrap_moe_lora "
                "and an explicit gate_weights per call. init.* are the lora_A weights right after wrapping "
                "under the same seed (reimpl replays the reference's RNG order, so they are identical in "
                "faithful mode; fixed builds no dead gating networks, so its stream and lora_A differ). "
                "Then the LoRA weights are set from the inputs (lora_B non-zero) and the model is float64.",
))
