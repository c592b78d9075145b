"""The teacher's data side: LastFM rows, candidate draws and prompt batches (iLoRA ``data/``).

Mirrors, in AkaliKong/iLoRA @ 28e47371, ``data/lastfm_data.py`` (rows with ``len_seq >= 3``, titles from
``id2name.txt``, negative sampling) and ``data/data_interface.py`` (``TrainCollater``: prompt choice, curriculum
draw, pair tokenization) -> :class:`LastFMData`, :func:`collate`, :func:`curriculum_prob`; plus the batch
generators of evaluation and export (:func:`eval_batches`, :func:`export_batches`).

Files are read through :func:`reimpl.data.load_ilora`, so every rule of docs/data.md holds before a row is used.

``ILORA-LASTFM-ONE-CANDIDATE`` (faithful): LastFM's ``negative_sampling`` returns ONE random item that is neither
in the history nor the target (``lastfm_data.py:33-36``); ``fixed``: ``cans_num - 1`` negatives + the target,
shuffled (as the reference's MovieLens/Steam datasets do). Ids in :mod:`reimpl.ilora.deviations_teacher`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from reimpl.cliconf import require
from reimpl.data import DataError, load_ilora
from reimpl.deviations import check_mode
from reimpl.ilora.prompt import fill_prompt
from reimpl.llm.tokens import encode


@dataclass
class DataConfig:
    data_dir: str = "../shared/data/ilora/lastfm"
    prompt_path: str = "ref_repositories/iLoRA/prompt/artist.txt"
    cans_num: int = 20              # train_lastfm.sh --cans_num 20
    padding_item_id: int = 4606     # main.py:153
    min_len_seq: int = 3            # lastfm_data.py:71
    mode: str = "faithful"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        require(self.cans_num >= 2, "--cans_num", "an integer >= 2 (the answer and at least one negative)",
                self.cans_num)
        require(self.min_len_seq >= 1, "min_len_seq", "an integer >= 1", self.min_len_seq)


class LastFMData:
    """LastFM split as ``LastfmData`` reads it (``lastfm_data.py``): ``sample(i, rng)`` -> dict."""

    FILES = {"train": "train_data.df", "val": "Val_data.df", "test": "Test_data.df"}

    def __init__(self, cfg: DataConfig, stage: str):
        check_mode(cfg.mode)
        if stage not in self.FILES:
            raise ValueError(f"LastFMData: stage must be one of {list(self.FILES)}, got {stage!r}")
        self.cfg, self.stage = cfg, stage
        d = Path(cfg.data_dir)
        names = d / "id2name.txt"
        if not names.is_file():
            raise DataError(f"{names}: title file missing (data_dir={cfg.data_dir}); the prompts name every item")
        # every rule of docs/data.md (right padding, len_seq, integer ids, padding id, titles for every id)
        ds = load_ilora(d, splits=(stage,), item_num=cfg.padding_item_id, mode=cfg.mode)
        s = ds[stage]
        frame = pd.DataFrame({"seq": s.seqs.tolist(), "len_seq": s.lens, "next": s.next})
        self.frame = frame[frame["len_seq"] >= cfg.min_len_seq].reset_index(drop=True)
        self.split, self.source = s, s.source
        self.id2name: dict[int, str] = ds.titles
        self.all_ids = list(self.id2name.keys())   # file order: the candidate draws depend on it

    def __len__(self) -> int:
        return len(self.frame)

    def unpadded(self, i: int) -> list[int]:
        return [int(x) for x in self.frame["seq"].iloc[i] if int(x) != self.cfg.padding_item_id]

    def candidates(self, seq_unpad: Sequence[int], target: int, rng: random.Random, mode: str) -> list[int]:
        """lastfm_data.py:33-36 (faithful: one negative) / movielens_data.py:44-48 (fixed)."""
        seen = set(seq_unpad)
        canset = [i for i in self.all_ids if i not in seen and i != target]
        if mode == "faithful":
            return rng.sample(canset, 1)
        cands = rng.sample(canset, self.cfg.cans_num - 1) + [target]
        rng.shuffle(cands)
        return cands

    def sample(self, i: int, rng: random.Random, mode: str | None = None, cans: list[int] | None = None) -> dict:
        mode = mode or self.cfg.mode
        row = self.frame.iloc[i]
        seq_unpad = self.unpadded(i)
        target = int(row["next"])
        cans = cans if cans is not None else self.candidates(seq_unpad, target, rng, mode)
        return {"seq": [int(x) for x in row["seq"]], "seq_name": [self.id2name[x] for x in seq_unpad],
                "len_seq": int(row["len_seq"]), "cans": cans, "cans_name": [self.id2name[c] for c in cans],
                "len_cans": self.cfg.cans_num, "item_id": target, "correct_answer": self.id2name[target]}


def collate(samples: list[dict], tokenizer, prompts: Sequence[str], rng: random.Random, train: bool,
            emb_prob: float = 1.0, terminator: str = "\n") -> dict:
    """TrainCollater.__call__ (data_interface.py:30-113): one template for the batch, filled per sample;
    train batches are (prompt, answer + terminator) pairs with aligned token types. The embedding
    prompt is used when ``rng.random() < emb_prob`` (drawn after the template, as l.32-40) or not train."""
    if not samples:
        raise ValueError("collate: empty batch")
    template = rng.choice(list(prompts))
    use_emb = rng.random() < emb_prob or not train
    texts = [fill_prompt(template, s["seq_name"], s["cans_name"], s["correct_answer"], with_embeddings=use_emb)
             for s in samples]
    kw = dict(padding="longest", truncation=False, add_special_tokens=True,
              return_token_type_ids=True, return_attention_mask=True)
    if train:
        tok = encode(tokenizer, [[p, s["correct_answer"] + terminator] for p, s in zip(texts, samples)], **kw)
    else:
        tok = encode(tokenizer, texts, **kw)
    lens = {len(s["cans"]) for s in samples}
    if len(lens) != 1:
        raise ValueError(f"collate: samples have different candidate counts {sorted(lens)}")
    batch = {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
             "token_type_ids": tok["token_type_ids"],
             "seq": torch.tensor([s["seq"] for s in samples]), "cans": torch.tensor([s["cans"] for s in samples]),
             "len_seq": torch.tensor([s["len_seq"] for s in samples]),
             "len_cans": torch.tensor([s["len_cans"] for s in samples]),
             "item_id": torch.tensor([s["item_id"] for s in samples]), "flag": not use_emb,
             "prompts": texts, "correct_answer": [s["correct_answer"] for s in samples],
             "cans_name": [s["cans_name"] for s in samples]}
    return batch


def curriculum_prob(batch_in_epoch: int, global_batch: int, total_batches: int, max_step: int,
                    num_workers: int, mode: str) -> float:
    """Probability that a training batch uses the embedding prompt (data_interface.py:38-40).

    faithful: ``cur_step / max_step`` where ``max_step = max_epochs * (N // bs) // num_workers``
    (data_interface.py:135) and ``cur_step`` is the counter of the worker's own copy of the collater,
    re-created each epoch: batch b of an epoch is worker ``b % W``'s ``(b // W + 1)``-th
    (ILORA-CURRICULUM-RESET). fixed: ``(global_batch + 1) / total_batches``.
    """
    check_mode(mode)
    if mode == "faithful":
        w = max(num_workers, 1)
        return (batch_in_epoch // w + 1) / max(max_step, 1)
    return (global_batch + 1) / max(total_batches, 1)


def eval_batches(data: LastFMData, tokenizer, prompts, rows: Sequence[int], batch_size: int, seed: int,
                 mode: str, terminator: str = "\n", split: str = "val"):
    """Evaluation batches (prompt only, embedding placeholders), as the val/test loaders (no shuffle).

    faithful: the test loader drops its last partial batch (data_interface.py:152-160, ``drop_last=True``;
    LastFM test at batch 8 scores 120 of 122 rows); fixed scores every row (ILORA-TEST-DROP-LAST)."""
    check_mode(mode)
    py = random.Random(seed)
    if mode == "faithful" and split == "test":
        rows = rows[:len(rows) // batch_size * batch_size]
    for s in range(0, len(rows), batch_size):
        samples = [data.sample(i, py, mode) for i in rows[s:s + batch_size]]
        yield collate(samples, tokenizer, prompts, py, train=False, terminator=terminator)


def export_batches(data: LastFMData, tokenizer, prompts: Sequence[str], rows: Sequence[int], batch_size: int,
                   seed: int, cans_num: int, terminator: str = "\n"):
    """Evaluation-style batches of train ``rows`` (in order) for the teacher export: each row's candidates are
    its target + ``cans_num - 1`` random items outside its history, shuffled (one ``random.Random(seed)``
    for the draws and the prompt templates, so the same seed gives the same candidates)."""
    py = random.Random(seed)
    for s in range(0, len(rows), batch_size):
        samples = []
        for i in rows[s:s + batch_size]:
            seen = set(data.unpadded(i))
            target = int(data.frame["next"].iloc[i])
            cands = py.sample([j for j in data.all_ids if j not in seen and j != target], cans_num - 1) + [target]
            py.shuffle(cands)
            samples.append(data.sample(i, py, cans=cands))
        yield collate(samples, tokenizer, prompts, py, train=False, terminator=terminator)
