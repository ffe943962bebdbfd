"""The evaluation set: which prompt and which seed each sample gets.

Every configuration of a comparison sees exactly the same (prompt, seed) pairs, so differences are caused by
quantization alone. The default set cycles through the model's ten classes with its canonical phrasing (the
digits for models outside the catalog).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.limits import MAX_PROMPT_CHARS, MAX_PROMPT_FILE_BYTES
from brevitas_ldm.zoo.catalog import CATALOG, embedded_model
from brevitas_ldm.zoo.data import label_from_prompt


@dataclass(frozen=True)
class EvaluationSet:
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    #: Reads the class a prompt asks for (the model's own class names; digits by default).
    label_reader: Callable[[str], int | None] = field(default=label_from_prompt, compare=False, repr=False)

    @property
    def labels(self) -> list[int | None]:
        """The class each prompt asks for (None when it names none)."""
        return [self.label_reader(p) for p in self.prompts]

    def __len__(self) -> int:
        return len(self.prompts)


def read_prompt_file(path: Path, flag: str = "--prompts") -> list[str]:
    if not Path(path).is_file():
        raise BrevitasLDMError(f"{flag} file {str(path)!r} does not exist: pass a text file with one prompt per line")
    size = Path(path).stat().st_size
    if size > MAX_PROMPT_FILE_BYTES:
        raise BrevitasLDMError(f"{flag} file {str(path)!r} is {size:,} bytes, more than the {MAX_PROMPT_FILE_BYTES:,} "
                               f"a prompt file may have: pass a file of prompts, one per line")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BrevitasLDMError(f"{flag} file {str(path)!r} is not UTF-8 text (byte {exc.start} cannot be decoded): "
                               f"pass a UTF-8 text file with one prompt per line") from None
    if "\x00" in text:
        raise BrevitasLDMError(f"{flag} file {str(path)!r} holds NUL bytes, so it is not a text file: pass a UTF-8 "
                               f"text file with one prompt per line")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    for number, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_PROMPT_CHARS:
            raise BrevitasLDMError(f"{flag} file {str(path)!r}: line {number} is {len(line):,} characters, more than "
                                   f"the {MAX_PROMPT_CHARS:,} a prompt may have (text encoders read a few hundred "
                                   f"tokens): shorten it, one prompt per line")
    if not prompts:
        raise BrevitasLDMError(f"{flag} file {str(path)!r} has no prompts: write one prompt per line")
    return prompts


def evaluation_set(num_samples: int, seed: int = 0, prompts: list[str] | None = None,
                   model: str | Path | None = None) -> EvaluationSet:
    """``num_samples`` samples: prompts cycled from ``prompts`` (default: the ten classes of ``model``, the digits
    for a model outside the catalog), seeds ``seed + i``."""
    if num_samples < 1:
        raise BrevitasLDMError(f"--num-samples {num_samples} must be at least 1")
    entry = embedded_model(model) or CATALOG["tiny-sd-digits"]
    base = prompts or entry.prompts()
    chosen = tuple(base[i % len(base)] for i in range(num_samples))
    return EvaluationSet(prompts=chosen, seeds=tuple(seed + i for i in range(num_samples)),
                         label_reader=entry.label_from_prompt)


def calibration_set(num_prompts: int, seed: int = 10_000, prompts: list[str] | None = None,
                    model: str | Path | None = None) -> EvaluationSet:
    """Calibration/analysis samples: the same prompt cycle, seeds disjoint from evaluation's (offset 10000)."""
    return evaluation_set(num_prompts, seed=seed, prompts=prompts, model=model)
