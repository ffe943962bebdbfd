"""Bounds on the sizes a user can ask for, checked where the value enters (flag, recipe key or file).

A count in the billions is a typo, not a job: left alone it reaches ``range()`` or an allocation after minutes of
model loading and planning (a MemoryError, or a plan of work of 666777 hours that then starts). The bounds sit
far above any real run, so they only ever refuse mistakes, and each refusal names the flag or key to change.
"""

from __future__ import annotations

from brevitas_ldm.errors import BrevitasLDMError

#: Most samples or prompts one run generates for evaluation, calibration, analysis or QAT (about 2,000 times the
#: defaults; 100k digits-sized samples already take hours on a CPU).
MAX_SAMPLES = 100_000
#: Most sampling steps of one run (schedulers with training timesteps are held to their own count, usually 1000).
MAX_STEPS = 10_000
#: Longest prompt line, in characters: text encoders read at most a few hundred tokens (CLIP 77, T5 512), and
#: tokenizing an 11 MB line alone took longer than a whole run.
MAX_PROMPT_CHARS = 10_000
#: Largest prompt file read (bytes): about 100k prompts of 160 characters.
MAX_PROMPT_FILE_BYTES = 16 * 1024 * 1024


def check_count(value: int, name: str, limit: int = MAX_SAMPLES) -> int:
    """``value`` when it is at most ``limit``; else one error naming ``name`` (a flag or a recipe key)."""
    if value > limit:
        raise BrevitasLDMError(f"{name} {value:,} is more than the {limit:,} one run takes: pass a smaller number "
                               f"(runs of that size need splitting into several)")
    return value
