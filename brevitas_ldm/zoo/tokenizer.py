"""A CLIP BPE vocabulary written by the project itself.

The real CLIP vocabulary cannot be downloaded here, so tiny-sd-digits gets a small byte-level BPE vocabulary:
every byte symbol (so any text still tokenizes) plus merges that build each word of the digit prompts left to
right. The files have CLIP's exact format, so ``CLIPTokenizer.from_pretrained`` loads them like any SD tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
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


def digit_prompts() -> list[str]:
    """tiny-sd-digits' training prompts, template-major (the order its shipped vocabulary was built in)."""
    return [template.format(name=name) for template in PROMPT_TEMPLATES for name in DIGIT_NAMES]


def prompt_words(prompts: Sequence[str] | None = None) -> list[str]:
    """Every word ``prompts`` (default: the digit prompts) use, in a fixed order, split the way CLIP's
    pre-tokenizer splits them (letters, single digits, punctuation runs: "t-shirt" is "t", "-", "shirt")."""
    words: list[str] = []
    for prompt in digit_prompts() if prompts is None else prompts:
        for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", prompt.lower()):
            if word not in words:
                words.append(word)
    return words


def build_vocab_and_merges(prompts: Sequence[str] | None = None) -> tuple[dict[str, int], list[str]]:
    """The vocabulary (token -> id) and the ordered merge rules for the words of ``prompts``."""
    symbols = list(_bytes_to_unicode().values())
    vocab_tokens: list[str] = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in prompt_words(prompts):
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


def write_tokenizer_files(directory: Path, prompts: Sequence[str] | None = None) -> int:
    """Write vocab.json, merges.txt and the tokenizer configs for ``prompts`` (default: the digit prompts);
    return the vocabulary size."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(prompts)
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
