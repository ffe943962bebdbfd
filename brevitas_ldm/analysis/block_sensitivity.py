"""Global (block-level) SQNR analysis: which blocks of the denoiser cost output quality when quantized.

Following Yang et al. (2023), the denoiser's blocks (:func:`brevitas_ldm.denoiser.blocks.get_blocks`, in execution
order) are quantized

* **progressively**: block 1, then blocks 1-2, then 1-3, ... The drop in output SQNR each block adds is its
  accumulated sensitivity, the paper's view of where quality is lost along the data path;
* **in isolation**: each block alone, the others in float. Under the noise-additivity model of
  :mod:`brevitas_ldm.planning.planners`, these numbers predict the SQNR of *any* per-block configuration, which is what
  the budget planner optimises.

For every configuration the sampler runs on the analysis prompts/seeds and two figures are streamed through
:class:`~brevitas_ldm.sqnr.SQNRMeter`: the SQNR of the denoiser output at every sampling step along the quantized
trajectory (against the FP trajectory's output at the same step), and the SQNR of the final latents. Only the FP
reference is kept in memory (final latents plus per-step denoiser outputs, which are small).

Cost. Re-quantizing and re-calibrating per configuration would dominate the analysis, so
:class:`PrecisionBank` quantizes and calibrates one copy of the denoiser per precision of the recipe's menu,
*once*, and a configuration is applied by swapping the Brevitas quant layers of those copies into the FP denoiser
(restored afterwards). Because Brevitas' calibration runs with quantization disabled, each copy's activation
ranges are those of the float network, so a swapped-in configuration is exactly the model
``quantize_denoiser(..., precisions=config)`` + calibration would build (the tests check this). Runs use Brevitas'
``quant_inference_mode`` (cached quantized weights), which gives identical outputs at a fraction of the cost.

Across processes (a torch.distributed job, :mod:`brevitas_ldm.process.ranks`) the FP reference's batches and the
configurations are split: each rank measures whole configurations (dealt by cost, longer prefixes costing more) with
a bank of only the precisions they need, every rank gathers every measurement, and the report is the single
process' report, plus what each rank did in ``work_per_rank``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from brevitas_ldm.analysis.block_report import (
    ANALYSIS_VERSION,
    REPORT_FILE,
    BlockEntry,
    BlockReport,
)
from brevitas_ldm.denoiser.blocks import Block, get_blocks
from brevitas_ldm.denoiser.sampling import (
    Condition,
    SamplingSpec,
    get_denoiser,
    sampling_calls,
)
from brevitas_ldm.denoiser.trajectory import FPReference, fp_reference, measure
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.precision import Precision, menu_of, parse_precision
from brevitas_ldm.process.ranks import (
    SINGLE,
    Ranks,
    all_gather,
    broadcast_from_main,
    current_ranks,
    peak_rss_bytes,
)
from brevitas_ldm.quant.calibration import calibration_calls
from brevitas_ldm.quant.precision_bank import PrecisionBank
from brevitas_ldm.quant.quantize import resolve_precisions
from brevitas_ldm.recipe import PLAN_GRANULARITIES, Recipe
from brevitas_ldm.sqnr import noise_ratio_to_db


def model_fingerprint(module: nn.Module) -> str:
    """A cheap digest of the weights (shapes and float64 sums), so a cache is not reused for changed weights."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in module.state_dict().items():
            value = param.detach().double()
            digest.update(f"{name}:{tuple(param.shape)}:{value.sum().item():.12e}:"
                          f"{value.abs().sum().item():.12e}".encode())
    return digest.hexdigest()[:16]


def _recipe_signature(recipe: Recipe) -> dict[str, Any]:
    """The parts of a recipe that change what the analysis measures (not the plan rule or its budget)."""
    data = recipe.to_dict()
    return {k: data.get(k) for k in ("weights", "activations", "calibration", "skip_layers")}


@dataclass
class _Config:
    kind: str           # "isolated" | "progressive"
    precision: Precision
    index: int          # block index (isolated) or last block of the prefix (progressive)


class BlockSensitivity:
    """Progressive and isolated block analysis of a pipeline's denoiser under ``recipe``.

    ``menu`` lists the precisions measured in isolation (default: the recipe's ``plan.menu`` plus its base and
    high precision); ``progressive`` those swept progressively (default: the recipe's base precision only, the
    paper's analysis). ``calibration_prompts``/``calibration_seeds`` default to the analysis prompts/seeds.
    ``granularity`` (default: the recipe's ``plan.granularity``) ``"layer"`` makes every quantizable layer its own
    unit, measured in isolation only. The runs sample ``analysis.steps`` steps when the recipe sets it.

    >>> report = BlockSensitivity(recipe, prompts, seeds, SamplingSpec(20)).run(pipe, cache_dir=".cache")
    """

    def __init__(self, recipe: Recipe, prompts: Sequence[Condition], seeds: Sequence[int],
                 spec: SamplingSpec = SamplingSpec(), menu: Sequence[str | Precision] | None = None,
                 progressive: Sequence[str | Precision] | None = None, progress: bool = True,
                 calibration_prompts: Sequence[Condition] | None = None,
                 calibration_seeds: Sequence[int] | None = None, isolated: bool = True,
                 granularity: str | None = None) -> None:
        if len(prompts) != len(seeds):
            raise BrevitasLDMError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt")
        if not prompts:
            raise BrevitasLDMError("the global analysis needs at least one prompt")
        self.recipe = recipe
        self.prompts = list(prompts)
        self.seeds = [int(s) for s in seeds]
        self.granularity = granularity or recipe.plan.granularity
        if self.granularity not in PLAN_GRANULARITIES:
            raise BrevitasLDMError(f"granularity = {self.granularity!r}: use one of {', '.join(PLAN_GRANULARITIES)}")
        if recipe.analysis.steps:
            spec = dataclasses.replace(spec, num_inference_steps=recipe.analysis.steps)
        self.spec = spec
        if menu is None:
            menu = [*recipe.plan.menu, recipe.default_precision, recipe.plan.high_precision]
        self.menu = menu_of(menu)
        if progressive is None:
            # A progressive sweep over 100+ single layers would cost a run per prefix and show nothing the
            # isolated layers do not: the layer analysis is isolated only.
            sweep = self.granularity == "block" and recipe.analysis.progressive
            progressive = [recipe.default_precision] if sweep else []
        self.progressive = [parse_precision(p, "progressive") for p in progressive]
        self.isolated = isolated
        self.progress = progress
        self.calibration_prompts = list(calibration_prompts) if calibration_prompts is not None else self.prompts
        self.calibration_seeds = list(calibration_seeds) if calibration_seeds is not None else self.seeds
        self.bank: PrecisionBank | None = None
        self.reference: FPReference | None = None

    # -- caching ---------------------------------------------------------------------------------------------
    def cache_key(self, pipe: Any, model_id: str | None = None) -> str:
        denoiser = get_denoiser(pipe)
        payload = {
            "version": ANALYSIS_VERSION,
            "model": model_id if model_id is not None else str(getattr(pipe, "name_or_path", "") or ""),
            "weights": model_fingerprint(denoiser),
            "recipe": _recipe_signature(self.recipe),
            "prompts": [str(p) for p in self.prompts], "seeds": self.seeds,
            "calibration": [[str(p) for p in self.calibration_prompts], self.calibration_seeds],
            "spec": dataclasses.asdict(self.spec) | {"batch_size": None},
            "menu": [p.name for p in self.measured_precisions],
            "progressive": [p.name for p in self.progressive], "isolated": self.isolated,
            "granularity": self.granularity,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def units(self, denoiser: nn.Module) -> list[Block]:
        """What is measured and planned: the denoiser's blocks, or one unit per quantizable layer (blocks in
        execution order, layers in registration order within each)."""
        blocks = get_blocks(denoiser)
        if self.granularity == "block":
            return blocks
        # The recipe's skip_layers stay float: a layer entry of a plan would override them, so they are no unit.
        base = resolve_precisions(denoiser, self.recipe)
        modules = dict(denoiser.named_modules())
        return [Block(name=name, module_names=(name,), kind=block.kind,
                      param_count=modules[name].weight.numel())
                for block in blocks for name in block.module_names if not base[name].is_float]

    @property
    def measured_precisions(self) -> list[Precision]:
        out = [p for p in self.menu if not p.is_float] if self.isolated else []
        return out + [p for p in self.progressive if not p.is_float and p not in out]

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, pipe: Any, cache_dir: str | Path | None = None, model_id: str | None = None,
            ranks: Ranks | None = None) -> BlockReport:
        """Measure (or load from ``cache_dir``) the block report of ``pipe``'s denoiser.

        ``ranks`` (default: the initialised torch.distributed group, if any) split the work; every rank returns the
        same report and only the main rank reads and writes the cache.
        """
        ranks = ranks or current_ranks()
        key = self.cache_key(pipe, model_id) if cache_dir is not None else ""
        report = None
        if cache_dir is not None and ranks.is_main:
            cached = Path(cache_dir) / f"global-{key}" / REPORT_FILE
            if cached.is_file():
                start = time.perf_counter()
                report = BlockReport.load(cached)
                report.from_cache = True
                report.timing_s = {**report.timing_s, "cache_load": time.perf_counter() - start}
        if cache_dir is not None:
            report = broadcast_from_main(report, "the global analysis' cache lookup", ranks)
        if report is not None:
            return report
        report = self._analyse(pipe, model_id, ranks)
        report.cache_key = key
        if cache_dir is not None and ranks.is_main:
            report.save(Path(cache_dir) / f"global-{key}")
        return report

    def planned_calls(self, blocks: Sequence[Block] | int, ranks: Ranks | None = None) -> dict[str, int]:
        """Denoiser calls :meth:`run` will make on a denoiser of these ``blocks`` (no cache), by the keys of
        ``report.denoiser_calls``: said before the work starts, and checked against the count by a test.

        With ``ranks`` of a distributed job: the calls of that rank (``blocks`` must then be the blocks, whose sizes
        decide the deal; a count of blocks is enough for one process).
        """
        ranks = ranks or SINGLE
        num_blocks = blocks if isinstance(blocks, int) else len(blocks)
        if ranks.is_distributed and isinstance(blocks, int):
            raise BrevitasLDMError("planned_calls of one rank needs the blocks (their sizes decide the deal)")
        configs = self._configs(num_blocks)
        mine = ranks.deal(self._costs(configs, blocks))
        full = sampling_calls(len(self.prompts), self.spec)
        reference_batches = len(ranks.round_robin(math.ceil(len(self.prompts) / self.spec.batch_size)))
        bank_spec = dataclasses.replace(self.spec, batch_size=self.recipe.calibration.batch_size)
        needed = {configs[i].precision for i in mine}
        calibrated = [p for p in self.measured_precisions if p.act_bits is not None and p in needed]
        calls = {"fp_reference": reference_batches * self.spec.num_inference_steps,
                 "calibration": len(calibrated) * calibration_calls(self.recipe, len(self.calibration_prompts),
                                                                     bank_spec),
                 "isolated": 0, "progressive": 0}
        for index in mine:
            calls[configs[index].kind] += full
        calls["total"] = sum(calls.values())
        return calls

    @staticmethod
    def _costs(configs: list[_Config], blocks: Sequence[Block] | int) -> list[float]:
        """Relative cost of each configuration's sampler run: the layers it quantizes (fake quantization is what
        makes a run dearer than the FP one), so a progressive prefix costs the sum of its blocks."""
        sizes = [1] * blocks if isinstance(blocks, int) else [len(block) for block in blocks]
        return [float(sizes[c.index] if c.kind == "isolated" else sum(sizes[:c.index + 1])) for c in configs]

    def _configs(self, num_blocks: int) -> list[_Config]:
        configs = []
        if self.isolated:
            configs += [_Config("isolated", p, i) for p in self.menu if not p.is_float for i in range(num_blocks)]
        for p in self.progressive:
            if p.is_float:
                continue
            # The 1-block prefix is the isolated first block: measured once when both are requested.
            first = 1 if (self.isolated and p in self.menu) else 0
            configs += [_Config("progressive", p, i) for i in range(first, num_blocks)]
        return configs

    def _analyse(self, pipe: Any, model_id: str | None, ranks: Ranks) -> BlockReport:
        start = time.perf_counter()
        denoiser = get_denoiser(pipe)
        blocks = self.units(denoiser)
        show = self.progress and ranks.is_main
        self.reference = reference = fp_reference(pipe, self.prompts, self.seeds, self.spec, progress=False,
                                                  ranks=ranks)
        self.bank = bank = PrecisionBank(pipe, self.recipe, self.calibration_prompts, self.calibration_seeds,
                                         self.spec, progress=show)
        configs = self._configs(len(blocks))
        mine = ranks.deal(self._costs(configs, blocks))      # every configuration, when single
        needed = {configs[i].precision for i in mine}
        precisions = [p for p in self.measured_precisions if p in needed]
        for precision in tqdm(precisions, desc="quantize + calibrate", disable=not show, leave=False):
            bank.ensure([precision])
        skipped = bank.skipped
        entries = [BlockEntry(
            name=b.name, kind=b.kind, num_layers=len(b),
            param_count=sum(bank.fp_layers[n].weight.numel() for n in b.module_names if n not in skipped),
            act_elements=sum(reference.act_elements.get(n, 0.0) for n in b.module_names if n not in skipped))
            for b in blocks]
        skipped_params = sum(bank.fp_layers[n].weight.numel() for n in skipped)
        skipped_acts = sum(reference.act_elements.get(n, 0.0) for n in skipped)

        measured: dict[int, tuple[float, list[float], float, int, float]] = {}
        for index in tqdm(mine, desc="global analysis", disable=not show):
            config = configs[index]
            chosen = [blocks[config.index]] if config.kind == "isolated" else blocks[:config.index + 1]
            layers = {name: config.precision for block in chosen for name in block.module_names}
            result = measure(pipe, reference, bank, layers)
            measured[index] = (result.final_db, result.steps_db, result.final.noise_ratio, result.calls,
                               result.seconds)
        work = {"rank": ranks.rank, "configurations": len(mine), "calibration_calls": bank.calibration_calls,
                "calibration_s": bank.calibration_s,
                "denoiser_calls": sum(m[3] for m in measured.values()) + bank.calibration_calls,
                "seconds": time.perf_counter() - start, "peak_rss_bytes": peak_rss_bytes()}
        shares = all_gather((measured, work), "the global analysis", ranks)
        measured = {index: value for share, _ in shares for index, value in share.items()}
        work_per_rank = [share_work for _, share_work in shares]

        calls = {"isolated": 0, "progressive": 0}
        seconds = {"isolated": 0.0, "progressive": 0.0}
        progressive_noise: dict[str, list[float]] = {p.name: [math.nan] * len(blocks) for p in self.progressive}
        for index, config in enumerate(configs):
            final_db, steps_db, noise_ratio, config_calls, config_seconds = measured[index]
            calls[config.kind] += config_calls
            seconds[config.kind] += config_seconds
            entry = entries[config.index]
            name = config.precision.name
            if config.kind == "isolated":
                entry.isolated_db[name] = final_db
                entry.isolated_steps_db[name] = steps_db
                if config.index == 0 and config.precision in self.progressive:
                    entry.progressive_db[name] = final_db
                    entry.progressive_steps_db[name] = steps_db
                    progressive_noise[name][0] = noise_ratio
            else:
                entry.progressive_db[name] = final_db
                entry.progressive_steps_db[name] = steps_db
                progressive_noise[name][config.index] = noise_ratio

        report = BlockReport(
            model=model_id if model_id is not None else str(getattr(pipe, "name_or_path", "") or ""),
            recipe=self.recipe.name, default_precision=self.recipe.default_precision,
            high_precision=self.recipe.plan.high_precision,
            precisions=list(self.menu if self.isolated else []),
            progressive_precisions=[p for p in self.progressive if not p.is_float],
            num_prompts=len(self.prompts), seeds=self.seeds, steps=self.spec.num_inference_steps,
            guidance_scale=self.spec.guidance_scale, blocks=entries, skipped_param_count=skipped_params,
            skipped_act_elements=skipped_acts)
        for name, noise in progressive_noise.items():
            if not noise or math.isnan(noise[-1]):
                continue
            report.full_db[name] = noise_ratio_to_db(noise[-1])
            report.full_steps_db[name] = entries[-1].progressive_steps_db[name]
            previous = 0.0
            for entry, current in zip(entries, noise):
                entry.progressive_drop_db[name] = noise_ratio_to_db(previous) - noise_ratio_to_db(current)
                added = max(current - previous, 0.0)
                if noise[-1] <= 0.0:
                    entry.share_db[name] = 0.0
                elif added >= noise[-1]:
                    entry.share_db[name] = math.inf
                else:
                    entry.share_db[name] = 10.0 * math.log10(noise[-1] / (noise[-1] - added))
                previous = current
        report.timing_s = {"fp_reference": reference.seconds,
                           "quantize_calibrate": sum(w["calibration_s"] for w in work_per_rank),
                           "isolated": seconds["isolated"], "progressive": seconds["progressive"],
                           "total": time.perf_counter() - start}
        if ranks.is_distributed:
            report.work_per_rank = work_per_rank
        report.denoiser_calls = {"fp_reference": reference.calls,
                                 "calibration": sum(w["calibration_calls"] for w in work_per_rank),
                                 "isolated": calls["isolated"], "progressive": calls["progressive"]}
        report.denoiser_calls["total"] = sum(report.denoiser_calls.values())
        return report
