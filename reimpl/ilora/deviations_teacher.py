"""Declared deviations of the iLoRA teacher assembly, loss, evaluation, optimizer and training loop.

Imported by the modules that implement them (loss, evaluate, optim, teacher, train) so that
``reimpl.deviations.DEVIATIONS`` lists them whenever those modules are in use.
"""

from __future__ import annotations

from reimpl.deviations import Deviation, declare

HR1_SUBSTRING = declare(Deviation(
    id="ILORA-HR1-SUBSTRING",
    system="iLoRA",
    ref="model/model_interface.py:480-486",
    what="calculate_hr1 counts a candidate as named when its lower-cased title is a raw substring of the "
         "generation; a row is valid only when exactly one candidate matches.",
    why="A short title inside a longer word or title ('Queen' in 'Queens of the Stone Age', 'Muse' in "
        "'Museum of Love', 'Air' in 'Air Supply') adds a spurious second match, so an exactly correct "
        "answer becomes invalid (and HR@1/ValidRatio drop); a title inside an unrelated word can also "
        "make an off-list answer valid.",
    fixed="Match titles at word boundaries and drop a match all of whose occurrences lie inside a longer "
          "matched candidate; candidates with the same title count once (the reference counts both, so "
          "two ids sharing a title make a row invalid: 22 MovieLens titles are shared by 45 ids, none on "
          "LastFM); valid/HR@1 definitions unchanged.",
    case="ilora.eval_hr1",
))

ANSWER_BOS_LABEL = declare(Deviation(
    id="ILORA-ANSWER-BOS-LABEL",
    system="iLoRA",
    ref="model/model_interface.py:42",
    what="Labels are the positions whose (reference-layout, shifted) token type is 1. A Llama tokenizer "
         "encodes the (prompt, answer) pair as '<s> prompt <s> answer', so the second <s> is a label: "
         "the model is trained to emit BOS after the prompt, and that token enters the loss mean.",
    why="The BOS label is not part of the answer; it dilutes the token-mean loss (one extra, easy "
        "token per row) and is a target generation never uses (skip_special_tokens drops it).",
    fixed="Mask special tokens (BOS) that open the answer segment; the loss averages over answer text "
          "tokens + terminator only. No effect with tokenizers that add no BOS to pairs (SmolLM2).",
    case="ilora.lm_loss",
))

OPTIM_LLM_NO_WD = declare(Deviation(
    id="ILORA-OPTIM-LLM-NO-WD",
    system="iLoRA",
    ref="model/model_interface.py:232",
    what="The LLM parameter group (which holds the LoRA experts, the only trainable LLM tensors) has no "
         "weight_decay key, so Adam uses 0 there while the projector and router groups get "
         "--weight_decay (1e-5). The group also lists every frozen base weight.",
    why="Looks unintended (the two other groups set it explicitly); with L2-in-Adam at 1e-5 the effect "
        "on training is small but it changes the optimizer state.",
    fixed="The LLM group holds only trainable tensors and uses weight_decay like the other groups.",
    case="ilora.trainable",
))

CURRICULUM_RESET = declare(Deviation(
    id="ILORA-CURRICULUM-RESET",
    system="iLoRA",
    ref="data/data_interface.py:38-40, 67, 135, 143",
    what="The prompt curriculum draws the embedding prompt with probability cur_step/max_step, where "
         "max_step = max_epochs*(N//bs)//num_workers and cur_step is a counter inside the collate_fn. "
         "Each DataLoader worker gets its own copy of the collate_fn and the (non-persistent) workers "
         "are re-created every epoch from the main-process copy whose counter never moves, so the "
         "probability restarts at ~0 every epoch and only reaches 1/max_epochs (0.2 for 5 epochs).",
    why="The curriculum (LLaRA) is meant to move from text-only to hybrid prompts over training; as "
        "written most batches (about 90% over 5 epochs) use the [PH] text-only prompt and freeze the "
        "projector.",
    fixed="probability = global batch index / total batches over the whole run (reaches 1 at the end).",
    effect_note="Measured by tests/test_ilora_teacher.py::test_curriculum_schedules (fraction of "
                "embedding-prompt batches over a 5-epoch LastFM schedule: faithful ~0.10, fixed ~0.50).",
))

LASTFM_ONE_CANDIDATE = declare(Deviation(
    id="ILORA-LASTFM-ONE-CANDIDATE",
    system="iLoRA",
    ref="data/lastfm_data.py:33-36 (and :36 len_cans = cans_num)",
    what="LastFM negative_sampling returns random.sample(canset, 1): one item that is neither in the history "
         "nor the target. The prompt lists that single item as 'the artist name candidates' and the answer "
         "is never among them (MovieLens/Steam sample cans_num-1 negatives + the target).",
    why="The model is asked to choose from a list that does not contain the answer; at evaluation a valid "
        "(single-candidate) answer can never be correct, so HR@1 on LastFM is 0 by construction and only "
        "generations outside the list can be right (and those are counted invalid).",
    fixed="cans_num - 1 negatives + the target, shuffled (as data/movielens_data.py:44-48).",
    effect_note="tests/test_ilora_teacher.py::test_lastfm_candidates (faithful: 1 candidate, target never "
                "in it; fixed: cans_num candidates, target always in it).",
))

declare(Deviation(
    id="ILORA-MAX-STEPS-STOP", system="iLoRA",
    ref="main.py:50,57",
    what="max_steps = len(trainset) * max_epochs // (accumulate_grad_batches * batch_size) is passed to the "
         "Trainer beside max_epochs; Lightning stops at the first of the two, and the cosine schedule is sized "
         "by max_steps.",
    why="Whenever (N // batch_size) % accumulate_grad_batches != 0 the run ends before its last epoch(s) and "
        "the schedule does not match the steps an epoch holds (320 rows, batch 8, accumulation 16: 2 steps "
        "instead of 3).",
    fixed="Every epoch runs; the schedule is sized by the optimizer steps really taken, "
          "max_epochs * ceil(batches per epoch / accumulate_grad_batches).",
    effect_note="tests/test_ilora_teacher.py::test_max_steps_stop (8 rows, batch 2, accumulation 3: faithful 1 "
                "step after 3 batches, fixed 2 steps after 4).",
))

declare(Deviation(
    id="ILORA-DDP-GLOBAL-SCHEDULE", system="iLoRA",
    ref="main.py:50; data/data_interface.py:135",
    what="max_steps and the curriculum's max_step are computed from the whole train set on every DDP process, "
         "while each process sees N / W rows.",
    why="On W processes the schedule is W times too long: the cosine LR ends at 0.546 (W=2) / 0.894 (W=4) "
        "of its peak instead of the minimum, and the curriculum ramps W times too slowly.",
    fixed="The schedule and the curriculum are sized by this process's own batches.",
    effect_note="Single-process runs are unaffected; measured on the reference in docs/reference-audit.md "
                "(tests/test_reference_audit.py).",
))

declare(Deviation(
    id="ILORA-TEST-DROP-LAST", system="iLoRA",
    ref="data/data_interface.py:152-160",
    what="The test DataLoader has drop_last=True (the val loader does not): the last partial batch of the test "
         "split is never scored.",
    why="Test HR@1 / ValidRatio leave out up to batch_size - 1 rows (LastFM test at batch 8: 120 of 122).",
    fixed="Every test row is scored.",
    effect_note="tests/test_ilora_teacher.py::test_test_split_drops_last_partial_batch.",
))
