"""brevitas-ldm against the strongest baselines at equal average bits (one process per part, same seeds).

    python benchmarks/compare.py --budgets w8a8 w4a8 --num-samples 500 --part a
    python benchmarks/compare.py --budgets w4a6 w8a4 w4a4 --num-samples 200 --part b
    python benchmarks/compare.py --model tiny-sd-fashion --budgets w8a8 --num-samples 200 --part a
                                                         # the second model's parts: docs/results/tiny-sd-fashion/
    python benchmarks/compare.py --report                # docs/compare.md + figures from every model's parts
    python benchmarks/compare.py --budgets w8a8 w4a8 --num-samples 500 --part a --only rule sqnr-hybrid
                                                         # rerun those rows of part a, keep the others

A budget ``wWaA`` has two levels, and every row of a level has the same average weight and activation bits:

* **exact** (W/A): rows that spend no extra bits. ``minmax`` (the paper's baseline), ``qdiffusion`` (Q-Diffusion's
  uniformly sampled calibration steps, without its reconstruction), ``brevitas-sd`` (Brevitas' Stable Diffusion
  example defaults: asymmetric weights, SmoothQuant everywhere at alpha 0.9, calibration over 8-step runs).
* **headroom** (at most W+0.5/A+0.5): the best simple rule, which needs no analysis: conv_in and conv_out in
  float, 8-bit weights on the last up block when W < 8, single-step calibration as the flagship's (at W8A8 the
  timestep-only layers over every step, as the quickstart recipe does since 0.6.0). Its average bits are the level's
  bits, and every planner gets exactly that budget: ``per-layer MILP`` (MixDQ-style: each layer quantized alone,
  output SQNR, an integer program over the layers; plain min-max calibrated over all steps), ``sqnr-hybrid``
  (the paper's block analysis and the project's block planner, single-step, SmoothQuant where the local analysis
  says, Brevitas' bias correction) and ``sqnr-hybrid-layer`` (the same with the planner working per layer).
  ``rule+bc`` is the rule with Brevitas' bias correction, a one-line addition any Brevitas user can make.

``--rows gptq`` runs the strongest rows again with every row's weights rounded by GPTQ (``[weights] rounding =
"gptq"``, Brevitas' GPTQ on the fixed min-max grid): ``rule+bc``, ``per-layer MILP`` and ``sqnr-hybrid-layer``
(at W8A8 also ``sqnr-hybrid``, the quickstart's block planner), their ``asym`` versions below 8-bit activations.
The margin is then taken against every peer, GPTQ or not.

``--rows asym`` runs the rows that quantize activations asymmetrically (unsigned with a zero point, Brevitas'
``ShiftedUint8ActPerTensorFloat``, min-max ranges): ``rule+bc asym`` and ``per-layer MILP asym``, the strongest
peers given the flagship's activation quantizer, and ``sqnr-hybrid-layer asym``, the flagship as
``sqnr-hybrid-w4a6`` and ``-w4a4`` ship it (calibrated over all steps at 4-bit activations). The margin is taken
against every peer, asymmetric or not.

``--rows all-steps`` runs ``sqnr-hybrid`` and ``sqnr-hybrid-layer`` with activations calibrated over every
sampling step, as the per-layer MILP peer is, instead of the paper's single step of maximum noise: the setting that
separates the flagship from that peer. Its rows are not in the margin tables (they are a different setting of the
flagship, not the built-in recipes), only in the detail tables and the notes. The third row,
``sqnr-hybrid-layer all-steps no-smoothquant``, also drops SmoothQuant and the local analysis.

``--rows fp8`` (W8A8 only) runs FP8 at equal bits: the built-in ``fp8-e4m3`` (every layer e4m3 weights and
activations, static per-tensor activation scales, all-steps calibration) against ``minmax`` at the exact level,
and ``sqnr-hybrid fp8`` (the flagship's planner with ``e4m3`` added to its menu, as ``sqnr-hybrid-fp8`` ships it)
against ``sqnr-hybrid`` at the headroom level, all in one process on the same samples.

Parts run in separate processes (side by side on two cores, one torch thread each: ``--threads``, default 1);
``--report`` joins them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shlex
import sys
from pathlib import Path

import torch
from harness import (
    Configuration,
    bench_context,
    fid_of,
    markdown_table,
    run_row,
    start_bench,
    write_json,
    write_page_keeping_notes,
)

from brevitas_ldm.io import decode_json_float
from brevitas_ldm.precision import parse_precision
from brevitas_ldm.recipe import Recipe, get_recipe
from brevitas_ldm.zoo.catalog import CATALOG

RESULTS = Path("docs/results")
HEADROOM_BITS = 0.5
#: Layer-level analyses measure 100+ units per precision: shorter runs keep them near the block analysis' cost.
LAYER_ANALYSIS_STEPS = 5
RULE_FLOAT_LAYERS = ("conv_in", "conv_out")
RULE_EXTRA_BLOCK = "up_blocks.2"
DEFAULT_MODEL = "tiny-sd-digits"
MODELS = tuple(CATALOG)      # every embedded model
BUDGET_ORDER = ("w8a8", "w4a8", "w4a6", "w8a4", "w4a4")   # the report's row order
NOTES_MARKER = "<!-- notes: kept when the tables are regenerated -->"
ROW_SETS = ("all", "asym", "gptq", "fp8", "all-steps")
QUICKSTART = "sqnr-hybrid-w8a8"
PEERS = ("rule", "rule+bc", "per-layer MILP", "rule+bc asym", "per-layer MILP asym")
FLAGSHIPS = ("sqnr-hybrid", "sqnr-hybrid-layer", "sqnr-hybrid-layer asym")
GPTQ_PEERS = ("rule+bc gptq", "per-layer MILP gptq", "rule+bc asym gptq", "per-layer MILP asym gptq")
GPTQ_FLAGSHIPS = ("sqnr-hybrid gptq", "sqnr-hybrid-layer gptq", "sqnr-hybrid-layer asym gptq")


def results_dir(model: str) -> Path:
    """Where a model's parts live: the default model's in docs/results (as before there was a second), every other
    model's in a folder of its own, so one model's ``--report`` never reads another's rows."""
    return RESULTS if model == DEFAULT_MODEL else RESULTS / model


def with_asymmetric_activations(config: Configuration, act_bits: int, flagship: bool = False) -> Configuration:
    """``config`` with unsigned, zero-pointed activation quantizers. The flagship also calibrates over every step
    at 4-bit activations, where one step's ranges serve the others worst (docs/ablation.md)."""
    recipe = config.recipe
    activations = dataclasses.replace(recipe.activations, symmetric=False)
    calibration = recipe.calibration
    if flagship and act_bits <= 4:
        calibration = dataclasses.replace(calibration, mode="all_steps", timestep_layers="calibration_steps")
    return _variant(config, "asym", activations=activations, calibration=calibration)


def with_all_step_calibration(config: Configuration) -> Configuration:
    """``config`` with its activations calibrated over every sampling step instead of the maximum-noise one: the
    paper's single-step calibration against the all-steps calibration the per-layer MILP peer uses."""
    calibration = dataclasses.replace(config.recipe.calibration, mode="all_steps", timestep_layers="calibration_steps")
    return _variant(config, "all-steps", calibration=calibration)


def without_smoothquant(config: Configuration) -> Configuration:
    """``config`` without SmoothQuant (nor the local analysis that picks its layers): what is left of the flagship
    beside the per-layer MILP peer is then bias correction and its calibration set."""
    return _variant(config, "no-smoothquant", smoothquant=dataclasses.replace(config.recipe.smoothquant, enabled=False),
                    analysis=dataclasses.replace(config.recipe.analysis, local=False))


def with_gptq(config: Configuration) -> Configuration:
    """``config`` with its weights rounded by GPTQ (``[weights] rounding = "gptq"``), planned as before."""
    return _variant(config, "gptq", weights=dataclasses.replace(config.recipe.weights, rounding="gptq"))


def _variant(config: Configuration, tag: str, **sections) -> Configuration:
    """``config`` with recipe ``sections`` replaced, ``tag`` added to its label (before the budget) and name."""
    label, budget = config.label.rsplit(" ", 1)
    recipe = config.recipe.replace(name=f"{config.recipe.name}-{tag}", **sections)
    return Configuration(f"{label} {tag} {budget}", recipe, config.plan)


def asymmetric_rows(simple: Configuration, per_layer: Configuration, flagship_layer: Configuration, budget: str,
                    act_bits: int) -> list[Configuration]:
    """The strongest rows with asymmetric activations: the rule with bias correction, the per-layer MILP and the
    layer-planned flagship (``--rows asym``, and ``--rows gptq`` below 8-bit activations)."""
    return [with_asymmetric_activations(rule_with_bias_correction(simple, budget), act_bits),
            with_asymmetric_activations(per_layer, act_bits),
            with_asymmetric_activations(flagship_layer, act_bits, flagship=True)]


def with_bits(recipe: Recipe, name: str, weight_bits: int, act_bits: int) -> Recipe:
    return recipe.replace(name=name, weights=dataclasses.replace(recipe.weights, bits=weight_bits),
                          activations=dataclasses.replace(recipe.activations, bits=act_bits))


def menu_for(weight_bits: int, act_bits: int) -> tuple[str, ...]:
    """Every planner's options at a budget: float and the 16-bit escape, 8/4-bit weights with 8/6-bit activations
    (so a plan can also spend *fewer* bits where a layer does not need them), and the budget's own widths."""
    names = ["float", "w8a16", "w8a8", "w4a8", "w8a6", "w4a6", f"w8a{act_bits}", f"w{weight_bits}a{act_bits}"]
    return tuple(dict.fromkeys(names))


def with_bias_correction(recipe: Recipe) -> Recipe:
    return recipe.replace(name=f"{recipe.name}+bc",
                          calibration=dataclasses.replace(recipe.calibration, bias_correction=True))


def exact_rows(budget: str, weight_bits: int, act_bits: int) -> list[Configuration]:
    return [Configuration(f"{peer} {budget}", with_bits(get_recipe(f"{peer}-w8a8"), f"{peer}-{budget}",
                                                        weight_bits, act_bits))
            for peer in ("minmax", "qdiffusion", "brevitas-sd")]


def timestep_layers_at(weight_bits: int, act_bits: int) -> str:
    """How the single-step rows of a budget calibrate the timestep-only layers: as the built-in recipe of those widths
    does. Only the quickstart (W8A8) calibrates them over every step; the low-bit built-ins keep the maximum-noise
    step, where every step measured worse (docs/ablation.md)."""
    quickstart = get_recipe(QUICKSTART)
    if (weight_bits, act_bits) == (quickstart.weights.bits, quickstart.activations.bits):
        return quickstart.calibration.timestep_layers
    return "calibration_steps"


def rule(budget: str, weight_bits: int, act_bits: int) -> Configuration:
    """The best simple rule, calibrated as the flagship of its budget is."""
    base = with_bits(get_recipe("minmax-w8a8"), f"rule-{budget}", weight_bits, act_bits)
    recipe = base.replace(skip_layers=RULE_FLOAT_LAYERS,
                          calibration=dataclasses.replace(base.calibration, mode="single_step",
                                                          timestep_layers=timestep_layers_at(weight_bits, act_bits)),
                          description="Best simple rule: first/last conv float, 8-bit weights on the last up "
                                      "block, single-step calibration")
    plan = {RULE_EXTRA_BLOCK: f"w8a{act_bits}"} if weight_bits < 8 else None
    return Configuration(f"rule {budget}", recipe, plan)


def rule_with_bias_correction(simple: Configuration, budget: str) -> Configuration:
    return Configuration(f"rule+bc {budget}", with_bias_correction(simple.recipe), simple.plan)


def planners(budget: str, weight_bits: int, act_bits: int, target: tuple[float, float]) -> list[Configuration]:
    """The planned rows, each given the rule's average bits as its budget."""
    menu = tuple(parse_precision(m) for m in menu_for(weight_bits, act_bits))
    avg_w, avg_a = target
    flagship = with_bias_correction(with_bits(get_recipe(QUICKSTART), f"sqnr-hybrid-{budget}", weight_bits, act_bits))
    # nearest rounding here, as every row's: ``--rows gptq`` gives GPTQ to every row alike
    flagship = flagship.replace(calibration=dataclasses.replace(
        flagship.calibration, timestep_layers=timestep_layers_at(weight_bits, act_bits)),
        weights=dataclasses.replace(flagship.weights, rounding="nearest"))
    budget_plan = dataclasses.replace(flagship.plan, method="budget", menu=menu, avg_weight_bits=avg_w,
                                      avg_act_bits=avg_a)
    flagship = flagship.replace(plan=budget_plan)
    layer_plan = dataclasses.replace(budget_plan, granularity="layer")
    layer_analysis = dataclasses.replace(flagship.analysis, steps=LAYER_ANALYSIS_STEPS)
    flagship_layer = flagship.replace(name=f"sqnr-hybrid-layer-{budget}+bc", plan=layer_plan, analysis=layer_analysis)
    minmax = with_bits(get_recipe("minmax-w8a8"), f"per-layer-milp-{budget}", weight_bits, act_bits)
    per_layer = minmax.replace(plan=layer_plan, analysis=dataclasses.replace(layer_analysis, global_=True, local=False))
    return [Configuration(f"per-layer MILP {budget}", per_layer),
            Configuration(f"sqnr-hybrid {budget}", flagship),
            Configuration(f"sqnr-hybrid-layer {budget}", flagship_layer)]


def part_configurations(args, bench) -> list[tuple[Configuration, dict]]:
    """Every row of this part in order, with the fields its JSON row gets besides the measurements."""
    chosen = []
    for budget in args.budgets:
        precision = parse_precision(budget, "--budgets")
        weight_bits, act_bits = precision.weight_bits, precision.act_bits
        simple = rule(budget, weight_bits, act_bits)
        target = bench.bits_of(simple.recipe, simple.plan)
        if target[0] > weight_bits + HEADROOM_BITS + 1e-9 or target[1] > act_bits + HEADROOM_BITS + 1e-9:
            print(f"warning: the rule at {budget} spends {target[0]:.2f}/{target[1]:.2f} bits, over the "
                  f"+{HEADROOM_BITS} headroom", file=sys.stderr)
        per_layer, flagship, flagship_layer = planners(budget, weight_bits, act_bits, target)
        if args.rows == "fp8":
            if (weight_bits, act_bits) != (8, 8):
                raise SystemExit(f"--rows fp8 compares 8-bit formats: pass --budgets w8a8, not {budget}")
            fp8_plan = dataclasses.replace(flagship.recipe.plan, menu=(*flagship.recipe.plan.menu,
                                                                        parse_precision("e4m3")))
            fp8_flagship = Configuration(f"sqnr-hybrid fp8 {budget}", flagship.recipe.replace(
                name=f"sqnr-hybrid-fp8-{budget}+bc", plan=fp8_plan))
            headroom = [flagship, fp8_flagship]
            exact = [Configuration(f"minmax {budget}", get_recipe("minmax-w8a8")),
                     Configuration(f"fp8-e4m3 {budget}", get_recipe("fp8-e4m3"))]
        elif args.rows == "gptq":
            # every row's weights rounded by GPTQ; below 8-bit activations the asymmetric rows, the strongest there
            if act_bits < 8:
                strongest = asymmetric_rows(simple, per_layer, flagship_layer, budget, act_bits)
            else:   # at the quickstart's budget its block-level flagship too
                block = [flagship] if (weight_bits, act_bits) == (8, 8) else []
                strongest = [rule_with_bias_correction(simple, budget), per_layer, *block, flagship_layer]
            headroom, exact = [with_gptq(config) for config in strongest], []
        elif args.rows == "all-steps":
            all_steps_layer = with_all_step_calibration(flagship_layer)
            headroom = [with_all_step_calibration(flagship), all_steps_layer, without_smoothquant(all_steps_layer)]
            exact = []
        elif args.rows == "asym":
            headroom, exact = asymmetric_rows(simple, per_layer, flagship_layer, budget, act_bits), []
        else:
            headroom = [simple, rule_with_bias_correction(simple, budget), per_layer, flagship, flagship_layer]
            exact = exact_rows(budget, weight_bits, act_bits)
        chosen += [(config, {"budget": budget, "level": "headroom", "target_bits": list(target)})
                   for config in headroom]
        chosen += [(config, {"budget": budget, "level": "exact"}) for config in exact]
    return chosen


def run_part(args) -> None:
    """Measure a part's rows into compare-PART.json. With ``--only``, rerun just those rows of an existing part
    (after a change that leaves the other rows' configurations as they were) and keep the others in place."""
    path = results_dir(args.model) / f"compare-{args.part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.only:   # checked before the FP run: a typo must not cost minutes
        rerun = {f"{name} {budget}" for name in args.only for budget in args.budgets}
        previous = json.loads(path.read_text()) if path.is_file() else {"rows": [], "context": {}}
        missing = sorted(rerun - {row["label"] for row in previous["rows"]})
        if missing:
            raise SystemExit(f"--only: {path} has no rows {missing} to replace; name rows of an existing part, "
                             f"without the budget")
    bench = start_bench(args.model, args.num_samples, args.steps, args.guidance_scale, args.seed)
    chosen = part_configurations(args, bench)
    if args.select:
        wanted = {f"{name} {budget}" for name in args.select for budget in args.budgets}
        unknown = sorted(wanted - {config.label for config, _ in chosen})
        if unknown:
            raise SystemExit(f"--select: --rows {args.rows} has no rows {unknown}; name rows without the budget")
        chosen = [(config, extra) for config, extra in chosen if config.label in wanted]
    context = bench_context(bench, args.seed) | {"command": _command()}
    if args.only:
        chosen = [(config, extra) for config, extra in chosen if config.label in rerun]
        rows = previous["rows"]
        context = previous["context"] | {"rerun": previous["context"].get("rerun", []) + [context["command"]]}
    else:
        rows = [bench.fp_row() | {"budget": "", "level": ""}]
    for config, extra in chosen:
        row = run_row(bench, config) | extra
        rows = [row if r["label"] == config.label else r for r in rows] if args.only else rows + [row]
        write_json(path, context, rows)


def _command() -> str:
    return "python benchmarks/compare.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _budget_table(rows: list[dict], budget: str) -> str:
    chosen = [r for r in rows if r.get("budget") == budget]
    baseline = chosen[0]["label"]
    return markdown_table(chosen, baseline_label=baseline)


def _margin_lines(rows: list[dict], budgets: list[str], columns: tuple[str, ...], peers: tuple[str, ...],
                  flagships: tuple[str, ...], margin_caption: str) -> list[str]:
    """The ``columns`` rows of each budget's headroom level in dB and FID, and the best of ``flagships`` minus the best
    of ``peers``; budgets where no column was measured are left out."""
    lines = ["| budget | bits (W/A) | " + " | ".join(columns) + f" | {margin_caption} |",
             "|---|---|" + "---|" * len(columns) + "---|"]
    for budget in budgets:
        level = _headroom(rows, budget)
        best_peer, ours = _best(level, peers), _best(level, flagships)
        if "rule" not in level or not any(k in level for k in columns) or best_peer is None or ours is None:
            continue   # a part still running

        def cell(key: str) -> str:
            row = level.get(key)
            if row is None:
                return "–"
            fid = f", FID {fid_of(row)[1]:.2f}" if fid_of(row)[1] is not None else ""
            return f"{row['output_sqnr_db']:.2f} dB{fid}"

        lines.append(f"| {budget} | {level['rule']['avg_weight_bits']:.2f}/{level['rule']['avg_act_bits']:.2f} | "
                     + " | ".join(cell(k) for k in columns)
                     + f" | {ours['output_sqnr_db'] - best_peer['output_sqnr_db']:+.2f} |")
    return lines


def _read_parts(model: str) -> tuple[list[str], list[dict]]:
    """``model``'s per-budget detail sections and every measured row but the fp8 part's (whose peers repeat other
    parts' labels on fewer samples), read from its results folder."""
    sections, measured = [], []
    for part in sorted(results_dir(model).glob("compare-*.json")):
        data = json.loads(part.read_text())
        context, rows = data["context"], data["rows"]
        for row in rows:
            for key, value in row.items():
                if value in ("inf", "-inf", "nan"):         # harness.write_json's codec
                    row[key] = decode_json_float(value)
        fp = rows[0]
        budgets = list(dict.fromkeys(r["budget"] for r in rows[1:]))
        row_set = re.search(r"--rows (\w+)", context["command"])
        if not (row_set and row_set.group(1) == "fp8"):
            measured.extend(rows[1:])
        for budget in budgets:
            title = f", rows: {row_set.group(1)}" if row_set else ""
            sections += [f"### {model}, {budget.upper()} ({context['num_samples']} samples{title})", "",
                         f"Command: `{context['command']}`. Machine: {context['machine']}. FP {fid_of(fp)[0]} "
                         f"{fid_of(fp)[1] or float('nan'):.2f}, accuracy {fp.get('prompt_accuracy', 1.0):.3f}.",
                         "", _budget_table([fp | {"budget": budget}] + rows[1:], budget), ""]
    return sections, measured


def _best(level: dict[str, dict], labels: tuple[str, ...]) -> dict | None:
    """The highest-SQNR row of ``labels`` measured at a budget's headroom level (None if none was)."""
    rows = [level[k] for k in labels if k in level]
    return max(rows, key=lambda r: r["output_sqnr_db"]) if rows else None


def _headroom(rows: list[dict], budget: str) -> dict[str, dict]:
    return {r["label"].rsplit(" ", 1)[0]: r for r in rows if r.get("budget") == budget and r.get("level") == "headroom"}


def _headline(measured: dict[str, list[dict]], budgets: list[str]) -> list[str]:
    """Both models side by side: per budget, each model's best peer and best sqnr-hybrid row (any rounding, any
    activation quantizer) and the margin between them."""
    lines = ["| budget | model | best peer | best sqnr-hybrid | margin |", "|---|---|---|---|---|"]

    def cell(row: dict) -> str:
        fid = fid_of(row)[1]
        return (f"{row['label'].rsplit(' ', 1)[0]}: {row['output_sqnr_db']:.2f} dB"
                + (f", FID {fid:.2f}" if fid is not None else ""))
    for budget in budgets:
        for model, rows in measured.items():
            level = _headroom(rows, budget)
            peer, ours = _best(level, (*PEERS, *GPTQ_PEERS)), _best(level, (*FLAGSHIPS, *GPTQ_FLAGSHIPS))
            if peer is None or ours is None:
                lines.append(f"| {budget.upper()} | {model} | not measured | not measured | – |")
                continue
            lines.append(f"| {budget.upper()} | {model} | {cell(peer)} | **{cell(ours)}** | "
                         f"{ours['output_sqnr_db'] - peer['output_sqnr_db']:+.2f} dB |")
    return lines


def _fp_fids(model: str) -> str:
    """``model``'s FP FID as its parts measured it (one value per sample count)."""
    values = {}
    for part in sorted(results_dir(model).glob("compare-*.json")):
        data = json.loads(part.read_text())
        name, fid = fid_of(data["rows"][0])
        if fid is not None:
            values[data["context"]["num_samples"]] = f"{name} {fid:.2f} at {data['context']['num_samples']} samples"
    return "; ".join(values[k] for k in sorted(values))


def report(out: Path) -> None:
    models = [m for m in MODELS if any(results_dir(m).glob("compare-*.json"))]
    if not models:
        raise SystemExit("no docs/results/compare-*.json: run the parts first (see the module docstring)")
    measured, sections, per_model = {}, [], []
    for model in models:
        model_sections, rows = _read_parts(model)
        measured[model] = rows
        sections += [f"## Every row: {model}", "", *model_sections]
        ordered = [b for b in BUDGET_ORDER if any(r["budget"] == b for r in rows)]
        margins = _margin_lines(rows, ordered, (*PEERS, *FLAGSHIPS), PEERS, FLAGSHIPS,
                                "best sqnr-hybrid minus best peer (dB), nearest rounding")
        gptq_margins = _margin_lines(rows, ordered, (*GPTQ_PEERS, *GPTQ_FLAGSHIPS), (*PEERS, *GPTQ_PEERS),
                                     (*FLAGSHIPS, *GPTQ_FLAGSHIPS),
                                     "best sqnr-hybrid minus best peer (dB), any rounding")
        suffix = "" if model == DEFAULT_MODEL else f"-{model}"
        figure = out.parent / "figures" / f"compare-equal-bits{suffix}.png"
        _figure(rows, ordered, figure, model)
        per_model += [f"## {model}", "", f"FP: {_fp_fids(model)}.", "", *margins, "",
                      *(["With every row's weights rounded by GPTQ (`--rows gptq`: `[weights] rounding = \"gptq\"`, "
                         "Brevitas' GPTQ on the fixed min-max grid, Hessians from the float calibration runs), "
                         "against every peer with or without it:", "", *gptq_margins, ""]
                        if len(gptq_margins) > 2 else []),
                      f"![quality at equal bits, {model}](figures/{figure.name})", ""]
    budgets = [b for b in BUDGET_ORDER if any(r["budget"] == b for rows in measured.values() for r in rows)]
    head = [f"# brevitas-ldm against the strongest baselines at equal bits ({' and '.join(models)})", "",
            "Every row of a budget level has the same average weight and activation bits. The **exact** level is "
            "the budget itself (min-max, Q-Diffusion-style calibration, Brevitas' SD example defaults). The "
            "**headroom** level is the bits of the best simple rule (conv_in/conv_out float, 8-bit weights on the "
            "last up block when W < 8, single-step calibration), and every planner is given that budget.", "",
            "Output SQNR against the FP pipeline on the same prompts and seeds, 20 DDIM steps, guidance 2.0. "
            "Rows: `rule` (the best simple rule), `rule+bc` (+ Brevitas' bias correction), `per-layer MILP` "
            "(MixDQ-style: every layer quantized alone, output SQNR over 5-step runs, integer program; plain min-max "
            "over all steps), `sqnr-hybrid` (the paper's block analysis + budget planner, SmoothQuant on the local "
            "analysis' worst layers, single-step calibration, bias correction), `sqnr-hybrid-layer` (the same, "
            "planned per layer: the built-in `sqnr-hybrid-w4a8`). The `asym` rows quantize activations unsigned "
            "with a zero point (min-max ranges); `sqnr-hybrid-layer asym` also calibrates over every step at 4-bit "
            "activations, as the built-in `sqnr-hybrid-w4a6` and `-w4a4` recipes do, and `rule+bc asym` and "
            "`per-layer MILP asym` are the strongest peers given the same quantizer. The `gptq` rows round every "
            "row's weights by GPTQ. The margin column is the best sqnr-hybrid row minus the best peer. A budget is "
            "a cap: the block planner's coarse units leave it up to 0.07 weight bits under, and at W8 budgets the "
            "layer planners leave up to 0.09 weight bits unspent because the only dearer weights are float ones "
            "(each row's bits are in its table). The recipes are the same on both models: nothing was retuned for "
            "the second.", "",
            "## Both models side by side", "",
            "The best peer and the best sqnr-hybrid row of each budget, over every variant measured (nearest or "
            "GPTQ rounding, symmetric or asymmetric activations); FIDs compare with the same model's FP FID only.",
            "", *_headline(measured, budgets), "", *per_model]
    write_page_keeping_notes(out, "\n".join(head + sections), NOTES_MARKER)
    print("\n".join(head))


def _figure(rows: list[dict], budgets: list[str], path: Path, model: str) -> None:
    from brevitas_ldm.analysis.figures import plt, save_figure

    kinds = [kind for kind in ("minmax", "qdiffusion", "brevitas-sd", *PEERS, *GPTQ_PEERS, *FLAGSHIPS, *GPTQ_FLAGSHIPS)
             if any(r["label"] == f"{kind} {r.get('budget')}" for r in rows)]
    fig, ax = plt.subplots(figsize=(14, 6))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        values = []
        for budget in budgets:
            match = [r for r in rows if r.get("budget") == budget and r["label"] == f"{kind} {budget}"]
            values.append(match[0]["output_sqnr_db"] if match else math.nan)
        ax.bar([i + (k - len(kinds) / 2) * width + width / 2 for i in range(len(budgets))], values, width,
               label=kind, color=plt.cm.tab20(k), hatch="//" if kind.startswith("sqnr") else None)
    ax.set_xticks(range(len(budgets)), [b.upper() for b in budgets])
    ax.set_ylabel("output SQNR vs FP (dB)")
    ax.set_title(f"{model}: equal bits per budget, exact level (min-max, qdiffusion, brevitas-sd), headroom level "
                 "(the rest)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.08))   # below: the bars fill the axes
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=MODELS)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", nargs="+", default=["w8a8", "w4a8", "w4a6", "w8a4", "w4a4"])
    parser.add_argument("--part", default="a", help="name of this process' results file")
    parser.add_argument("--rows", default="all", choices=ROW_SETS,
                        help="all: the original rows; asym: the asymmetric-activation peers and flagship; gptq: the "
                             "strongest rows with GPTQ-rounded weights; fp8: FP8 at W8A8; all-steps: the flagship "
                             "rows calibrated over every step")
    parser.add_argument("--only", nargs="+", metavar="ROW",
                        help="rerun only these rows of an existing part (labels without the budget, e.g. rule "
                             "sqnr-hybrid) and keep its other rows as measured")
    parser.add_argument("--select", nargs="+", metavar="ROW",
                        help="measure only these rows of --rows in a new part (labels without the budget): the "
                             "second model's parts skip rows the first model showed to be dominated")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this part: parts run side by side, one per core, and two 2-thread "
                             "parts on 2 cores spin against each other (about 10x slower analyses, same figures)")
    parser.add_argument("--report", action="store_true", help="join the parts into --out")
    parser.add_argument("--out", type=Path, default=Path("docs/compare.md"))
    args = parser.parse_args()
    if args.threads < 1:
        raise SystemExit(f"--threads must be at least 1, not {args.threads}")
    if args.report:
        report(args.out)
    else:
        torch.set_num_threads(args.threads)
        run_part(args)


if __name__ == "__main__":
    main()
