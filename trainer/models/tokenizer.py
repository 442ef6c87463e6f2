"""The tiny scale's tokenizer: a word-level vocabulary over the synthetic captions, built in-project.

It is a ``transformers.PreTrainedTokenizerFast`` (T5's special-token layout: ``<pad>`` = 0, ``</s>`` = 1,
``<unk>`` = 2, ``</s>`` appended to every prompt), so it is saved and loaded with ``save_pretrained`` /
``AutoTokenizer.from_pretrained`` exactly like umT5's tokenizer at full scale.
"""

from __future__ import annotations

from trainer.data.synthetic import VOCABULARY

# Words outside the synthetic captions that prompts commonly use: the discriminator's fixed prompt
# ("a video with good motion") and the built-in motion prompt suite's glue words.
EXTRA_WORDS = [
    "a",
    "an",
    "the",
    "video",
    "with",
    "good",
    "motion",
    "of",
    "and",
    "is",
    "in",
    "on",
    "slowly",
    "quickly",
    "moving",
    "moves",
    "to",
]


def default_vocabulary() -> list[str]:
    return sorted(set(VOCABULARY) | set(EXTRA_WORDS))


def build_word_tokenizer(vocabulary: list[str] | None = None, max_length: int = 16):
    # heavy: transformers, only when a tiny model is built
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = sorted({w.lower() for w in (vocabulary or default_vocabulary())})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )
