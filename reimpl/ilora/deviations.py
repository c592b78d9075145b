"""Declared deviations of the iLoRA teacher components (SASRec, router/gating, MoE-LoRA, projector/prompt).

Imported by ``reimpl/ilora/__init__.py`` so that importing any of these modules declares them.
Each entry: what the reference does, why it matters, what ``mode="fixed"`` does, and where the
effect is measured (a parity case run in both modes, or ``effect_note``).
"""

from __future__ import annotations

from reimpl.deviations import Deviation, declare

SYSTEM = "iLoRA"

declare(Deviation(
    id="ILORA-SASREC-SQUEEZE-B1", system=SYSTEM,
    ref="recommender/A_SASRec_final_bce_llm.py:184",
    what="SASRec.forward returns s_fc(state).squeeze(): with batch size 1 the scores lose the batch axis "
         "([item_num] instead of [1, item_num]).",
    why="Shape depends on the batch size; downstream code indexing [B, I] breaks or broadcasts at B = 1.",
    fixed="Always returns [B, item_num].",
    effect_note="Shape only (values identical); tests/test_ilora_sasrec.py::test_forward_batch_one_squeeze. "
                "iLoRA itself never calls SASRec.forward (only cacu_x / cacul_h).",
))

declare(Deviation(
    id="ILORA-SASREC-LEN0", system=SYSTEM,
    ref="recommender/A_SASRec_final_bce_llm.py:13-18,183,215 (extract_axis_1 and its callers)",
    what="The user state is read at position len_states - 1; a length of 0 indexes -1, i.e. the last "
         "(padded) position, silently.",
    why="An empty history yields the encoder output of a padding slot (ln_3.bias-like) instead of an error.",
    fixed="len_states must lie in [1, state_size]; 0 raises ValueError naming the field.",
    effect_note="Error path only; tests/test_ilora_sasrec.py::test_len_zero. LastFM rows all have len_seq >= 3 "
                "(data/lastfm_data.py:71), so no shipped run is affected.",
))

declare(Deviation(
    id="ILORA-REC-TRAIN-MODE", system=SYSTEM,
    ref="model/model_interface.py:409,422-429; main.py:57 (Lightning 1.x Trainer)",
    what="load_rec_model puts the frozen SASRec in eval mode, but the Lightning 1.x trainer the reference "
         "targets calls .train() on the whole LightningModule when fit starts and after each validation, so "
         "during training cacul_h runs with dropout p=0.1 (embedding, attention, feed-forward) and the "
         "router's input (user_embeds) is noisy; validation/test use eval mode.",
    why="The frozen encoder is meant to give a deterministic user representation; training-time gates are "
        "computed from dropped-out states the model never sees at evaluation.",
    fixed="encode_users always computes the user state without dropout.",
    case="ilora.sasrec_user_state_train",
))

declare(Deviation(
    id="ILORA-ROUTER-NUM-EXPERTS", system=SYSTEM,
    ref="model/router/nlpr.py:83-84",
    what="build_router(**kwargs) ignores its arguments and always builds a 4-expert router, whatever --num_moe.",
    why="With num_moe != 4 the gate [B, 1, 4] no longer broadcasts against the [B, L, num_moe, out] expert "
        "outputs; MoE-LoRA Linear.forward swallows the error and every wrapped projection returns zeros.",
    fixed="The router has num_moe experts.",
    effect_note="No effect at num_moe = 4 (train_lastfm.sh); tests/test_ilora_gating.py::test_router_num_experts.",
))

declare(Deviation(
    id="ILORA-GATING-TOPK-RESOFTMAX", system=SYSTEM,
    ref="model/peft/tuners/gating.py:29-36",
    what="topK keeps the top-k softmax probabilities, fills the rest with -inf and applies softmax again to "
         "the kept *probabilities* (values in (0, 1)), which pushes the k weights towards 1/k.",
    why="The expert weights no longer reflect the gate's preferences (e.g. 0.7/0.2 becomes 0.62/0.38).",
    fixed="Renormalizes the kept probabilities: p_k / sum(p_k). Identical for k = 1 (one-hot).",
    case="ilora.gating_variants",
))

declare(Deviation(
    id="ILORA-GATING-NOISE-IN-EVAL", system=SYSTEM,
    ref="model/peft/tuners/gating.py:71-72,94-95",
    what="Noise and MLP_noise add N(0, 0.1^2) noise to the gate logits whatever the module mode, so "
         "evaluation is stochastic.",
    why="Evaluation gates (and hence predictions) change from run to run.",
    fixed="Noise only in train mode.",
    case="ilora.gating_variants",
))

declare(Deviation(
    id="ILORA-MOELORA-SWALLOW-ERRORS", system=SYSTEM,
    ref="model/peft/tuners/moelora.py:763,797-799",
    what="MoE-LoRA Linear.forward wraps its body in try/except Exception, prints the error and returns "
         "torch.zeros_like(x) -- the shape of the *input* -- e.g. for r not divisible by num_moe, a gate "
         "with another batch size (beam search) or expert count, or a dtype mismatch.",
    why="A misconfiguration silently zeroes every wrapped projection (training continues on garbage).",
    fixed="Shapes are validated (gate [B, E] against x [B, L, in], r % num_moe == 0 at construction) and "
          "errors raise.",
    effect_note="Error path only; the faithful zeros are measured against the reference by the parity case "
                "ilora.moe_lora_error_path and tests/test_ilora_moe_lora.py::test_error_paths.",
))

declare(Deviation(
    id="ILORA-MOELORA-MERGE-UNGATED", system=SYSTEM,
    ref="model/peft/tuners/moelora.py:718-748",
    what="merge() adds lora_B @ lora_A * scaling to the base weight: the sum of all experts, each with "
         "weight 1, ignoring the gate (gates sum to 1, so this is E times the uniform-gate update); a merged "
         "layer then ignores the per-sample gate.",
    why="A merged model (merge_adapter / merge_and_unload) computes something no gate ever produced.",
    fixed="merge(gate) needs one gate vector [E] and adds sum_e g_e B_e A_e * scaling (per-sample gates "
          "cannot be merged and raise).",
    case="ilora.moe_lora_merge",
))

declare(Deviation(
    id="ILORA-MOELORA-DEAD-GATING", system=SYSTEM,
    ref="model/peft/tuners/moelora.py:604-606,779-780; model_interface.py:232",
    what="Every wrapped linear builds a --gating network (Dense: Linear(64, E, bias=False)) that forward "
         "never calls (the shared router's gate is used instead). It is marked trainable, counted, saved in "
         "checkpoints, draws from the RNG at construction, never gets a gradient, and is excluded from the "
         "optimizer.",
    why="Dead parameters; their init shifts the RNG stream, so the LoRA A matrices depend on --gating.",
    fixed="No per-layer gating network is built (forward is unchanged; the initial LoRA A weights differ "
          "for a given seed because the RNG stream is no longer shifted).",
    effect_note="Forward identical for identical weights; init differs "
                "(tests/test_ilora_moe_lora.py::test_dead_gating_init).",
))

declare(Deviation(
    id="ILORA-INJECT-COUNT-MISMATCH", system=SYSTEM,
    ref="model/model_interface.py:453-461",
    what="wrap_emb zips placeholder positions with embeds[i, :len_seq] / [i, :len_cans]: extra placeholders "
         "keep their token embedding, extra items are dropped, silently.",
    why="A prompt/sequence mismatch (e.g. a truncated prompt) feeds the LLM the raw [HistoryEmb] token "
        "embedding in place of an item.",
    fixed="The number of placeholders must equal min(len, number of items) per row; otherwise ValueError "
          "naming the rows. A history without any item counts 0: the data files give it len_seq 1 and its prompt "
          "no placeholder, a row the reference skips (l.454), and so does fixed.",
    effect_note="Error path only; faithful truncation measured against the reference by the parity case "
                "ilora.injection_mismatch.",
))

declare(Deviation(
    id="ILORA-MOELORA-MIX-ORDER", system=SYSTEM,
    ref="model/peft/tuners/moelora.py:750-753,783",
    what="lora_B is applied to every expert separately (einsum of A_out [B, L, E, r/E] with lora_B reshaped "
         "to [E, r/E, out]) and the E outputs [B, L, E, out] are then summed under the gate.",
    why="E times the lora_B work and an [B, L, E, out] intermediate; faithful keeps the order because in "
        "float32 it rounds differently from the algebraically equal mix-first form.",
    fixed="The gate scales the expert blocks of A x first and one lora_B matmul follows: "
          "sum_e g_e B_e (A_e x) = B (g (.) A x); equal up to float rounding.",
    case="ilora.moe_lora_linear_f32",
))
