"""Reference loader facade: in-process access to the unmodified reference code.

``dllm2rec()`` -> parity.shims.dllm2rec.load()   (DLLM2Rec main.py / utility.py components)
``ilora()``    -> parity.shims.ilora.load()      (iLoRA models, routers, MoE-LoRA, MInterface)

Both raise ``parity.materialize.RefError`` where the checkout is missing or differs from the lock.
"""

from __future__ import annotations


def dllm2rec():
    from parity.shims import dllm2rec as shim

    return shim.load()


def ilora():
    from parity.shims import ilora as shim

    return shim.load()
