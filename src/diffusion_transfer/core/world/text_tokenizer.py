"""The FaceWorld text world's tokenizer: a ``transformers.CLIPTokenizer``
made offline from FaceWorld's caption words (:mod:`.captions`).

A CLIP BPE tokenizer is a vocabulary and a merge list. Here the vocabulary
holds every letter (alone and word-final, ``a</w>``), the punctuation the
captions use, and every caption word whole, with the merges that join each
word left to right (as tests/core/_sd_helpers.py builds its tiny one, and
diffusers' pipeline tests theirs); a word outside the captions falls back to
its letters. Saved with ``save_pretrained``, it loads with
``CLIPTokenizer.from_pretrained`` on any machine, no network needed.
"""

from __future__ import annotations

import json
import re
import string
import tempfile
from pathlib import Path

import numpy as np

from diffusion_transfer.core.world.captions import caption, caption_variants
from diffusion_transfer.core.world.render import ATTRIBUTES, STYLES, sample_attributes

#: Special tokens: beginning and end of text (the end token also pads, as in CLIP).
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: Punctuation the captions use (``straight-faced``, ``a photo: a man, ...``).
PUNCTUATION = (",", ":", "-")


def caption_words(n_samples: int = 4000, seed: int = 0) -> list[str]:
    """Every word of the canonical captions and of ``n_samples`` random
    variants (all styles, ages named or not), sorted; deterministic."""
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n_samples):
        attrs = sample_attributes(rng, STYLES[i % len(STYLES)])
        texts += [caption(attrs), caption_variants(attrs, rng, name_age=bool(i % 2))]
    texts += [" ".join(v) for v in ATTRIBUTES.values()]
    return sorted({w for t in texts for w in re.findall(r"[a-z]+", t.lower())})


def build_tokenizer(words: list[str] | None = None, max_length: int = 40):
    """A ``CLIPTokenizer`` whose whole-word tokens are ``words`` (default:
    :func:`caption_words`), padding to ``max_length`` tokens."""
    from transformers import CLIPTokenizer  # deferred: transformers takes seconds to import

    vocab = {BOS: 0, EOS: 1}
    for ch in (*string.ascii_lowercase, *PUNCTUATION):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    ranks: dict[tuple[str, str], int] = {}
    for word in words if words is not None else caption_words():
        pieces = _bpe(word, ranks)
        while len(pieces) > 1:  # stuck on earlier words' merges: join what is left, left to right
            ranks.setdefault((pieces[0], pieces[1]), len(ranks))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    with tempfile.TemporaryDirectory() as tmp:  # CLIPTokenizer reads its vocabulary from files
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length,
                             bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """``word``'s tokens under the merges ``ranks`` (CLIP's BPE: the lowest-ranked pair first), so
    that merges added for a later word only join what earlier merges leave apart: every word ends whole."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        known = [(r, i) for r, i in pairs if r is not None]
        if not known:
            break
        i = min(known)[1]
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


__all__ = ["BOS", "EOS", "PUNCTUATION", "build_tokenizer", "caption_words"]
