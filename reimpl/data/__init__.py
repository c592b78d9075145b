"""Data layer: readers/writers for the iLoRA and DLLM2Rec layouts, the ml-100k builder, synthetic data.

Everything is read into one typed form (``SeqSplit`` / ``SeqDataset``, see types.py) and validated there;
teacher files (``tocf/``: ranking, confidence, embeddings; uncertainty, rationale vectors) through the typed
readers of teacher.py. Malformed input raises ``DataError`` naming file, row, field and what was expected.
See docs/data.md.
"""

from .dllm2rec import load_dllm2rec, write_dllm2rec
from .ilora import load_ilora, read_id2name, read_u_item, write_ilora
from .movielens import build_movielens, read_u_data
from .synthetic import synthetic_dataset, synthetic_split
from .teacher import read_confidence, read_embeddings, read_ranking, read_rationale_vectors, read_uncertainty
from .types import DataError, SeqDataset, SeqSplit, lens_from_seqs

__all__ = ["DataError", "SeqDataset", "SeqSplit", "lens_from_seqs", "load_dllm2rec", "write_dllm2rec",
           "load_ilora", "write_ilora", "read_id2name", "read_u_item", "build_movielens", "read_u_data",
           "synthetic_split", "synthetic_dataset", "read_ranking", "read_confidence", "read_embeddings",
           "read_uncertainty", "read_rationale_vectors"]
