"""A T5 (Unigram) tokenizer made locally, so the synthetic model needs no hub.

WanPipeline expects a T5-style tokenizer that appends ``</s>``. Its vocabulary (``t5_vocab.json``: 131 pieces with
their scores) was trained once with the ``tokenizers`` library's Unigram trainer on a fixed corpus of prompts, and is
kept as data: that trainer is not deterministic (the pieces' order and scores change from one process to the next),
so a vocabulary trained at each build tokenized the same prompt into other ids in each trial process of an
in-memory synthetic model, and every check output compared across trials carried that difference. The vocabulary goes
to ``transformers.T5Tokenizer`` as a list: passing a ``vocab_file`` is silently ignored by transformers 5.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB = Path(__file__).with_name("t5_vocab.json")


def build_t5_tokenizer(vocab_size: int):
    """Return a ``T5Tokenizer`` over the fixed vocabulary; ``vocab_size`` is the embedding's size, which it must fit."""
    from transformers import T5Tokenizer

    vocab = [tuple(entry) for entry in json.loads(VOCAB.read_text())]
    if len(vocab) > vocab_size:
        raise ValueError(f"the synthetic tokenizer has {len(vocab)} pieces; an embedding of {vocab_size} rows cannot take them")
    return T5Tokenizer(vocab=vocab, extra_ids=0)
