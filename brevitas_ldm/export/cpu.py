"""Which CPU a figure was measured on: onnxruntime's integer kernels, and so its numbers, differ by x86 kind.

Every onnxruntime figure the project writes (``export.json``, benchmark JSON, docs) carries :func:`cpu_info`: the
CPU model, the ISA flags that decide which kernel onnxruntime picks, and the onnxruntime version.

The flags come from CPUID as numpy's runtime dispatcher reads it (``AVX2``, ``AVX512F``, ``AVX512BW``,
``AVX512VNNI``), the same instruction onnxruntime's MLAS uses to choose its kernels, and not from
``/proc/cpuinfo``, which an emulator passes through from the host (under ``qemu -cpu Haswell`` it still lists the
host's VNNI). Only ``avx_vnni`` and ``amx_int8``, which numpy does not probe, are read from ``/proc/cpuinfo``.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from brevitas_ldm.export.emulation import EMULATED_CPU_FLAGS

#: Flags that decide onnxruntime's integer kernels: AVX2 (u8s8 saturates), VNNI/AMX (exact u8s8).
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: Our flag name -> numpy's CPUID feature name.
_CPUID_FEATURES = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512bw": "AVX512BW", "avx512_vnni": "AVX512VNNI"}


def _cpuid_features() -> dict[str, bool]:
    """numpy's CPUID probe of this process's CPU (what an emulated CPU really offers)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return dict(__cpu_features__)


@dataclass(frozen=True)
class CpuInfo:
    """The machine an onnxruntime figure comes from (``emulated`` names the qemu CPU model when there was one)."""

    model: str
    isa_flags: tuple[str, ...]
    onnxruntime: str
    emulated: str | None = None

    @property
    def has_vnni(self) -> bool:
        return any(flag in self.isa_flags for flag in _VNNI_FLAGS)

    def describe(self) -> str:
        """One line for messages and tables: model, flags, onnxruntime version."""
        where = f"{self.emulated} emulated by qemu on {self.model}" if self.emulated else self.model
        return f"{where} [{' '.join(self.isa_flags) or 'no avx2'}], onnxruntime {self.onnxruntime}"

    def to_dict(self) -> dict:
        return {**asdict(self), "isa_flags": list(self.isa_flags), "vnni": self.has_vnni}


def cpu_info(emulated: str | None = None) -> CpuInfo:
    """This machine's CPU; with ``emulated`` (a qemu CPU model such as ``Haswell``) that CPU's flags instead."""
    import onnxruntime

    model, proc_flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not proc_flags:
                proc_flags = set(value.split())
    flags = {flag for flag, feature in _CPUID_FEATURES.items() if _cpuid_features().get(feature)}
    flags |= proc_flags & {"avx_vnni", "amx_int8"}
    if emulated is not None:

        flags = set(EMULATED_CPU_FLAGS[emulated])
    return CpuInfo(model=model, isa_flags=tuple(f for f in ISA_FLAGS if f in flags),
                   onnxruntime=onnxruntime.__version__, emulated=emulated)
