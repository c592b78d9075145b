"""``python -m reimpl.dllm2rec`` == ``python -m reimpl.dllm2rec.train``."""

import sys

from reimpl.dllm2rec.train import main

sys.exit(main())
