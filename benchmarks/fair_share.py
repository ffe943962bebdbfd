"""Fair share under load: the global analysis alone and beside CPU-bound neighbours, before and after the thread fix.

Each configuration runs ``brevitas-ldm analyze`` (global analysis only) in a fresh process, once on the otherwise
idle machine and once beside ``--neighbours`` busy-looping processes (started ``--warmup`` seconds earlier).
Configurations:

* ``0.1 behaviour``: one torch thread per core whatever the load (``--threads <cores>``), OpenMP's default wait
  policy (spin, then sleep), what the product did before;
* ``passive wait, all cores``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at barriers at once), the
  alternative that was measured and rejected;
* ``auto`` (the default now): threads = the cores other processes' running threads leave idle, at start.

The figure of merit is the slowdown (loaded / alone wall time of the global analysis) against the slowdown a fair
share predicts: with ``t`` busy threads of ours and ``k`` neighbours on ``c`` cores, ``max(1, (t + k) / c)``.
Writes ``docs/fair-share.md`` and a JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neighbours", type=int, default=None, help="busy-looping neighbours (default: cores)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds the neighbours run before the job")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "fair-share.md")
    parser.add_argument("--render-only", action="store_true",
                        help="redraw --out from the JSON beside it without measuring")
    return parser.parse_args(argv)


def run_analysis(label: str, env_extra: dict[str, str], threads: str, args, workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "BREVITAS_LDM_THREADS")}
    env.update(env_extra)
    out = workdir / f"{label.replace(' ', '-').replace(',', '')}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "brevitas_ldm", "analyze", "--model", "tiny-sd-digits", "--recipe",
               "sqnr-hybrid-w8a8", "--num-prompts", str(args.num_prompts), "--steps", str(args.steps),
               "--threads", threads, "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=workdir)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{label}: analyze failed:\n{done.stderr[-2000:]}")
    plan_line = next(line for line in done.stdout.splitlines() if line.startswith("plan of work"))
    threads_used = int(plan_line.split(" on ")[1].split(" thread")[0])
    summary = json.loads((out / "analysis.json").read_text())
    return {"global_analysis_s": summary["timing_s"]["global_analysis"], "process_wall_s": wall,
            "threads": threads_used}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render_only:
        sys.path.insert(0, str(REPO))
        print(render(json.loads(args.out.with_suffix(".json").read_text()), args.out))
        return 0
    cores = len(os.sched_getaffinity(0))
    neighbours = args.neighbours if args.neighbours is not None else cores
    configurations = [("0.1 behaviour", {}, str(cores)),
                      ("passive wait, all cores", {"OMP_WAIT_POLICY": "PASSIVE"}, str(cores)),
                      ("auto (default)", {}, "auto")]
    results = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for label, env, threads in configurations:
            print(f"{label}: alone", flush=True)
            results[label] = {"alone": run_analysis(label, env, threads, args, workdir)}
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(neighbours)]
        try:
            time.sleep(args.warmup)
            for label, env, threads in configurations:
                print(f"{label}: beside {neighbours} neighbours (load {os.getloadavg()[0]:.1f})", flush=True)
                results[label]["loaded"] = run_analysis(label, env, threads, args, workdir)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    import torch

    from brevitas_ldm.export.cpu import cpu_info

    machine = cpu_info()
    cpu = f"{machine.model} [{' '.join(machine.isa_flags)}]"
    record = {"command": ("python benchmarks/fair_share.py " + " ".join(sys.argv[1:])).strip(), "cpu": cpu,
              "cores": cores, "neighbours": neighbours, "warmup_s": args.warmup, "num_prompts": args.num_prompts,
              "steps": args.steps, "wall_s": time.perf_counter() - started,
              "versions": {"python": platform.python_version(), "torch": torch.__version__}, "results": results}
    sys.path.insert(0, str(REPO))
    from brevitas_ldm.io import write_json_atomic

    write_json_atomic(args.out.with_suffix(".json"), record)
    print(render(record, args.out))
    return 0


def render(record: dict, out: Path) -> str:
    """docs/fair-share.md from the measured record (``--render-only`` redraws it without measuring)."""
    from brevitas_ldm.io import write_text_atomic

    cores, neighbours = record["cores"], record["neighbours"]
    lines = ["# Fair share under load", "",
             f"Command: `{record['command']}` ({record['wall_s'] / 60:.1f} min wall). CPU: {record['cpu']}, "
             f"{cores} cores; python {record['versions']['python']}, torch {record['versions']['torch']}. The job: "
             f"`brevitas-ldm analyze --model tiny-sd-digits --recipe sqnr-hybrid-w8a8 --num-prompts "
             f"{record['num_prompts']} --steps {record['steps']}` (global + local analysis) in a fresh process; the "
             f"figure is its global analysis' wall time. Neighbours: {neighbours} busy-looping Python processes, "
             f"started {record['warmup_s']:.0f} s before the loaded runs.", "",
             "| configuration | threads alone / loaded | global analysis alone (s) | beside neighbours (s) | "
             "slowdown | fair-share slowdown |", "|---|---|---:|---:|---:|---:|"]
    for label, row in record["results"].items():
        alone, loaded = row["alone"], row["loaded"]
        slowdown = loaded["global_analysis_s"] / alone["global_analysis_s"]
        fair = max(1.0, (loaded["threads"] + neighbours) / cores)
        lines.append(f"| {label} | {alone['threads']} / {loaded['threads']} | {alone['global_analysis_s']:.1f} | "
                     f"{loaded['global_analysis_s']:.1f} | {slowdown:.2f}x | {fair:.2f}x |")
    lines += ["", "Fair-share slowdown: the scheduler shares the cores among runnable threads, so with `t` threads of "
              "ours beside `k` single-threaded neighbours on `c` cores each thread gets `c / (t + k)` of a core and "
              "work done at one core per thread takes `max(1, (t + k) / c)` times as long.", ""]
    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    return text


if __name__ == "__main__":
    sys.exit(main())
