"""`recparity <command> ...`: one entry point that forwards to the module CLIs.

Each command is an ordinary ``python -m`` module; this only saves typing:

    recparity refs            -> python -m parity.materialize
    recparity golden          -> python -m parity.golden
    recparity parity          -> python -m parity.run
    recparity bench           -> python -m benchmarks.run
    recparity convert         -> python -m reimpl.data.convert
    recparity train-student   -> python -m reimpl.dllm2rec.train
    recparity train-teacher   -> python -m reimpl.ilora.train
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "refs": "parity.materialize",
    "golden": "parity.golden",
    "parity": "parity.run",
    "bench": "benchmarks.run",
    "convert": "reimpl.data.convert",
    "train-student": "reimpl.dllm2rec.train",
    "train-teacher": "reimpl.ilora.train",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nrecparity: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    mod = importlib.import_module(COMMANDS[argv[0]])
    sys.argv = [f"recparity {argv[0]}"] + argv[1:]
    return int(mod.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
