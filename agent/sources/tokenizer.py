"""A T5 (Unigram) tokenizer made locally, so the synthetic model needs no hub.

WanPipeline expects a T5-style tokenizer that appends ``</s>``. We train a tiny Unigram model with
the ``tokenizers`` library and hand its vocabulary to ``transformers.T5Tokenizer``; passing a
``vocab_file`` is silently ignored by transformers 5 (every id becomes ``<unk>``).
"""

from __future__ import annotations

import json

_CORPUS = [
    "A cat walking on the grass in the sun.",
    "Two astronauts ride horses across a red desert at dusk, cinematic, slow motion.",
    "A drone shot over a coastline with waves breaking on black rocks.",
    "Close-up of rain falling on a city street at night, neon reflections.",
    "An old fisherman mends his net on a wooden boat; seagulls circle above.",
    "blurry, low quality, static, overexposed, watermark, text, worst quality",
    "0123456789 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
]


def build_t5_tokenizer(vocab_size: int):
    """Return a ``T5Tokenizer`` with at most ``vocab_size`` entries, trained on a fixed corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    vocab = [tuple(entry) for entry in json.loads(tokenizer.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0)
