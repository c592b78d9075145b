"""Re-implementation of the iLoRA teacher (AkaliKong/iLoRA @ 28e47371), one module per component.

* ``sasrec``     frozen SASRec encoder + restricted checkpoint reader (recommender/A_SASRec_final_bce_llm.py)
* ``router``     shared router of ``--router share`` (model/router/nlpr.py) and the unused cvr.py router
* ``gating``     per-layer gating networks (model/peft/tuners/gating.py)
* ``moe_lora``   MoE-LoRA tuner layer + model wrapper with an explicit per-call gate (model/peft/tuners/moelora.py)
* ``projector``  MLP projector, encode_items / encode_users (model/mlp_projector.py, model/model_interface.py)
* ``prompt``     prompt templates and vectorized embedding injection (prompt/*.txt, MInterface.wrap_emb)
* ``deviations`` the declared faithful/fixed differences of these components
"""

from reimpl.ilora import deviations as _deviations  # noqa: F401  (declares the iLoRA deviations)
