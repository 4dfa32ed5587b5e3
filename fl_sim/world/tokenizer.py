"""The one tokenizer every model shares (teacher and devices), trained offline with ``tokenizers``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fl_sim.cache import cache_root, get_or_build, stable_hash
from fl_sim.world.domains import DOMAINS, FAMILIES, corpus_words, make_sample

PAD, BOS, EOS, IMAGE, SEP, UNK = "<pad>", "<bos>", "<eos>", "<image>", "<sep>", "<unk>"
SPECIALS = [PAD, BOS, EOS, IMAGE, SEP, UNK]
# ids below this are the built-in world's (specials and words); a run's own words come after them
BUILT_IN_VOCAB = len(SPECIALS) + len(set(corpus_words()))


def _train(folder: Path, n_corpus: int, seed: int, extra: list[str]) -> dict:
    """The built-in world's word-level tokenizer; ``extra`` words (a user's) are appended after its ids, so a
    built-in word keeps its id whatever data a run brings."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(seed)
    corpus = []
    for dom in DOMAINS.values():
        for _ in range(n_corpus):
            s = make_sample(dom, rng, "train", cell_px=4, families=FAMILIES)
            corpus += [s["question"], s["answer"], s["caption"]]
    corpus.append(" ".join(corpus_words()))  # the closed vocabulary, so rare words are never <unk>
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1))
    if extra:
        vocab = tok.get_vocab()
        for word in sorted(set(extra) - set(vocab)):
            vocab[word] = len(vocab)
        tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK, sep_token=SEP, additional_special_tokens=[IMAGE])
    fast.save_pretrained(folder)
    return {"vocab_size": len(fast), "built_in_words": BUILT_IN_VOCAB}


def load_tokenizer(cache_dir: str | None = None, n_corpus: int = 300, seed: int = 0, catalog=None):
    """Train (once, cached) and load the shared word-level tokenizer: the built-in world's words plus every
    word of ``catalog`` (a ``fl_sim.world.catalog.DomainCatalog``: the run's datasets on disk), so a user's
    word is never ``<unk>``. With user domains, its cache key (and so every zoo model's) covers their words."""
    from transformers import PreTrainedTokenizerFast

    extra = catalog.words() if catalog else []
    spec = {"n_corpus": n_corpus, "seed": seed, "vocab": corpus_words(), "specials": SPECIALS}
    key = stable_hash(spec | ({"user_words": extra, "appended": True} if extra else {}))
    folder = get_or_build(cache_root(cache_dir) / "tokenizer" / key, lambda d: _train(d, n_corpus, seed, extra),
                          "tokenizer")
    return PreTrainedTokenizerFast.from_pretrained(folder)
