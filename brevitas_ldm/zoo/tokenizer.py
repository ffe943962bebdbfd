"""A CLIP BPE vocabulary written by the project itself.

The real CLIP vocabulary cannot be downloaded here, so tiny-sd-digits gets a small byte-level BPE vocabulary:
every byte symbol (so any text still tokenizes) plus merges that build each word of the digit prompts left to
right. The files have CLIP's exact format, so ``CLIPTokenizer.from_pretrained`` loads them like any SD tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from brevitas_ldm.zoo.data import DIGIT_NAMES, PROMPT_TEMPLATES

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 16


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (the same mapping the tokenizer applies)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def prompt_words() -> list[str]:
    """Every word the training prompts use, in a fixed order."""
    words: list[str] = []
    for template in PROMPT_TEMPLATES:
        for name in DIGIT_NAMES:
            for word in template.format(name=name).lower().split():
                if word not in words:
                    words.append(word)
    return words


def build_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The vocabulary (token -> id) and the ordered merge rules."""
    symbols = list(_bytes_to_unicode().values())
    vocab_tokens: list[str] = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in prompt_words():
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            rule = f"{left} {right}"
            if rule not in merges:
                merges.append(rule)
            if merged not in vocab_tokens:
                vocab_tokens.append(merged)
            left = merged
    vocab_tokens += [BOS, EOS]
    return {token: i for i, token in enumerate(vocab_tokens)}, merges


def write_tokenizer_files(directory: Path) -> int:
    """Write vocab.json, merges.txt and the tokenizer configs; return the vocabulary size."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2))
    return len(vocab)
