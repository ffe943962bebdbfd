"""Generate docs/api.md from the docstrings of the public API.

    python docs/gen_api.py
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path


def public_modules() -> list[tuple[str, list[str]]]:
    """(module, names) of the public API, in the order of ``brevitas_ldm._EXPORTS``, then the export helpers."""
    import brevitas_ldm

    grouped: dict[str, list[str]] = {}
    for name, module in brevitas_ldm._EXPORTS.items():
        grouped.setdefault(module, []).append(name)
    grouped["brevitas_ldm.export"] = ["export_denoiser", "export_float_onnx", "verify_onnx", "check_agreement",
                                      "integer_kernel_counts", "onnx_latency", "onnx_quant_summary",
                                      "session_options", "cpu_info", "run_onnx_emulated", "store_for_x86",
                                      "lower_to_integer_kernels"]
    return [("brevitas_ldm", [])] + list(grouped.items())


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def render() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand.", ""]
    for module_name, names in public_modules():
        module = importlib.import_module(module_name)
        lines += [f"## `{module_name}`", "", inspect.cleandoc(module.__doc__ or ""), ""]
        for name in names or []:
            obj = getattr(module, name)
            kind = "class" if inspect.isclass(obj) else "function"
            lines += [f"### {kind} `{name}{_signature(obj)}`", "", inspect.cleandoc(obj.__doc__ or ""), ""]
            if inspect.isclass(obj):
                for attr, member in inspect.getmembers(obj):
                    if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                        continue
                    owner = (member.fget if isinstance(member, property) else member).__qualname__.split(".")[0]
                    if owner != obj.__name__ or not member.__doc__:
                        continue
                    sig = _signature(member) if inspect.isfunction(member) else ""
                    lines += [f"- `{attr}{sig}`: {inspect.cleandoc(member.__doc__).splitlines()[0]}"]
                lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from brevitas_ldm.io import write_text_atomic

    write_text_atomic(Path(__file__).resolve().parent / "api.md", render())
    print("wrote docs/api.md")
