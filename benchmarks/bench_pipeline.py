"""Pipeline benchmark: the leader against bare Prefect mapping, side by side in one run.

1. 10 tasks of 1 s (`sleep 1` commands) on 1, 2, 3, 5 and 10 workers: wall time of the
   whole leader call (flow run, config, tiers, report files) and of a bare Prefect flow
   mapping the same commands over a ThreadPoolTaskRunner, both with Prefect's defaults
   and inside the same `leader_session()` (heartbeat off, one shared API client; the
   leader's artifacts are flushed after the call). Speedup = 10 s of work / wall time.
2. 1000 tasks of 1 s at max_parallel 50 and 200: share of the ideal makespan reached.
3. The bundled example pipeline with a cold setup cache, then warm.

Runs against a fresh local Prefect server (SQLite in a temporary PREFECT_HOME). Writes
benchmarks/results/pipeline.json and pipeline.md.

    python benchmarks/bench_pipeline.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKERS = (1, 2, 3, 5, 10)
TARGETS = {1: 0.98, 2: 1.96, 3: 2.45, 5: 4.7, 10: 8.5}
ORIGINAL = {1: 0.97, 2: 1.90, 3: 2.38, 5: 4.43}
LARGE = ((50, 0.97), (200, 0.90))  # (max_parallel, target share of the ideal makespan)


def sleep_config(directory: Path, tasks: int, seconds: float, max_parallel: int) -> Path:
    lines = [f"name: bench-{tasks}x{max_parallel}", f"scaling: {{max_parallel: {max_parallel}}}",
             "tasks:"]  # fmt: skip
    lines += [
        f'  - {{name: t{i:04d}, priority: 1, run: "sleep {seconds:g}"}}' for i in range(tasks)
    ]
    path = directory / f"bench-{tasks}x{max_parallel}.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def time_leader(config: Path, report_dir: Path) -> tuple[float, Any]:
    from flows._prefect import state_result
    from flows.pipeline.flow import pipeline

    started = time.perf_counter()
    state = pipeline(config_path=str(config), report_dir=str(report_dir), return_state=True)
    wall = time.perf_counter() - started
    report = state_result(state)
    assert report.ok, f"benchmark run failed: {report.summary}"
    return wall, report


def make_bare_flow(workers: int) -> Callable[[int, float], Any]:
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    @task
    def run(index: int, seconds: float) -> int:
        return subprocess.run(["/bin/sh", "-c", f"sleep {seconds:g}"], check=True).returncode

    @flow(name=f"bare-map-{workers}", task_runner=ThreadPoolTaskRunner(max_workers=workers))
    def bare(tasks: int, seconds: float) -> list[int]:
        futures = run.map(range(tasks), seconds=seconds)  # type: ignore[call-arg]
        return [f.result() for f in futures]

    return bare


def time_bare(workers: int, tasks: int, seconds: float) -> float:
    bare = make_bare_flow(workers)
    started = time.perf_counter()
    bare(tasks, seconds)
    return time.perf_counter() - started


def time_empty_flow_run(repeats: int) -> float:
    """Median wall time of a flow run that does nothing, in a leader session: the fixed
    cost of the API round trips that create, start and end any flow run."""
    from prefect import flow

    from flows._prefect import leader_session

    @flow(name="empty", persist_result=False)
    def empty() -> None:
        return None

    times = []
    for _ in range(max(5, repeats)):
        with leader_session():
            started = time.perf_counter()
            empty()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def speedup_series(directory: Path, repeats: int) -> tuple[list[dict[str, Any]], float]:
    """The speedup rows, and the fixed cost of a flow run measured beside them."""
    from flows._prefect import leader_session

    warm_up = sleep_config(directory, 2, 0.01, 2)  # first calls pay imports and registration
    with leader_session():
        time_leader(warm_up, directory / "report")
        time_bare(2, 2, 0.01)
    flow_run_s = time_empty_flow_run(repeats)
    rows = []
    for workers in WORKERS:
        config = sleep_config(directory, 10, 1.0, workers)
        leader, bare_default, bare_fast = [], [], []
        for _ in range(repeats):  # interleaved, so machine noise hits all three alike
            with leader_session():
                leader.append(time_leader(config, directory / "report")[0])
            bare_default.append(time_bare(workers, 10, 1.0))
            with leader_session():
                bare_fast.append(time_bare(workers, 10, 1.0))
        row = {
            "workers": workers,
            "ideal_s": math.ceil(10 / workers) * 1.0,
            "leader_s": statistics.median(leader),
            "bare_default_s": statistics.median(bare_default),
            "bare_no_heartbeat_s": statistics.median(bare_fast),
        }
        for key in ("leader", "bare_default", "bare_no_heartbeat"):
            row[f"{key}_speedup"] = round(10.0 / row[f"{key}_s"], 3)
        # the best any flow run can do: the ideal makespan plus a flow run's fixed cost
        row["ceiling_speedup"] = round(10.0 / (row["ideal_s"] + flow_run_s), 3)
        row["target_speedup"] = TARGETS[workers]
        row["original_speedup"] = ORIGINAL.get(workers)
        row["meets_target"] = row["leader_speedup"] >= TARGETS[workers]
        rows.append(row)
        print(
            f"  {workers:>2} workers: leader {row['leader_speedup']:.2f}x, bare "
            f"{row['bare_default_speedup']:.2f}x (same session "
            f"{row['bare_no_heartbeat_speedup']:.2f}x), target {TARGETS[workers]}, "
            f"ceiling {row['ceiling_speedup']:.2f}x",
            flush=True,
        )
    return rows, flow_run_s


def large_runs(directory: Path, tasks: int) -> list[dict[str, Any]]:
    from benchmarks.common import CpuMeter, cpu_budget_ms
    from flows._prefect import leader_session

    meter = CpuMeter()
    rows = []
    for max_parallel, target in LARGE:
        config = sleep_config(directory, tasks, 1.0, max_parallel)
        ideal = math.ceil(tasks / max_parallel) * 1.0
        before = meter.read()
        with leader_session():
            leader_wall, report = time_leader(config, directory / "report-large")
        leader_cpu = (meter.read() - before).per_unit_ms(tasks)
        tiers_wall = sum(t.wall_s for t in report.tiers)
        before = meter.read()
        bare_wall = time_bare(max_parallel, tasks, 1.0)
        bare_cpu = (meter.read() - before).per_unit_ms(tasks)
        with leader_session():
            bare_fast_wall = time_bare(max_parallel, tasks, 1.0)
        row = {
            "tasks": tasks,
            "max_parallel": max_parallel,
            "ideal_s": ideal,
            "leader_s": round(leader_wall, 3),
            "leader_tiers_s": round(tiers_wall, 3),
            "bare_default_s": round(bare_wall, 3),
            "bare_no_heartbeat_s": round(bare_fast_wall, 3),
            "leader_share": round(ideal / leader_wall, 3),
            "bare_default_share": round(ideal / bare_wall, 3),
            "bare_no_heartbeat_share": round(ideal / bare_fast_wall, 3),
            "target_share": target,
            "leader_cpu_ms_per_task": leader_cpu,
            "bare_cpu_ms_per_task": bare_cpu,
            "cpu_budget_ms": cpu_budget_ms(ideal, target, tasks),
        }
        row["meets_target"] = row["leader_share"] >= target
        rows.append(row)
        print(
            f"  {tasks} tasks @ {max_parallel}: leader {row['leader_share']:.1%} of ideal, "
            f"bare {row['bare_default_share']:.1%} (same session "
            f"{row['bare_no_heartbeat_share']:.1%}), target {target:.0%}",
            flush=True,
        )
    return rows


def example_cold_warm(directory: Path) -> dict[str, Any]:
    from flows._prefect import leader_session, state_result
    from flows.pipeline.flow import pipeline

    config = ROOT / "examples" / "multi-agent-config.yml"
    cache_root = directory / "example-cache"
    runs = {}
    for label in ("cold", "warm"):
        started = time.perf_counter()
        with leader_session():
            state = pipeline(config_path=str(config), report_dir=str(directory / f"ex-{label}"),
                             cache_root=str(cache_root), return_state=True)  # fmt: skip
        wall = time.perf_counter() - started
        report = state_result(state)
        runs[label] = {
            "wall_s": round(wall, 2),
            "setup_s": report.setup.duration_s,
            "cache_hit": report.setup.cache_hit,
            "tiers_s": round(sum(t.wall_s for t in report.tiers), 2),
            "ok": report.ok,
        }
        print(f"  example {label}: {wall:.1f}s (setup {report.setup.duration_s:.1f}s, "
              f"cache hit {report.setup.cache_hit})", flush=True)  # fmt: skip
    runs["warm_speedup"] = round(runs["cold"]["wall_s"] / runs["warm"]["wall_s"], 2)
    return runs


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Pipeline benchmark",
        "",
        f"{results['date']} · {results['machine']} · Prefect {results['prefect']} "
        f"(server on {results['database']}) · {results['repeats']} repeats (median)",
        "",
        "## 10 tasks of 1 s (speedup = 10 s / wall time of the whole call)",
        "",
        f"An empty flow run takes {results['flow_run_s'] * 1000:.0f} ms here (create, start "
        "and end it through the API): the ceiling column is 10 s / (ideal makespan + that).",
        "",
        "| workers | ideal | ceiling | leader | target | bare Prefect | bare, same session | "
        "original |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["speedup"]:
        mark = "✅" if r["meets_target"] else "❌"
        original = f"{r['original_speedup']:.2f}x" if r["original_speedup"] else "-"
        lines.append(
            f"| {r['workers']} | {10 / r['ideal_s']:.2f}x | {r['ceiling_speedup']:.2f}x | "
            f"{mark} {r['leader_speedup']:.2f}x "
            f"({r['leader_s']:.2f}s) | {r['target_speedup']}x | {r['bare_default_speedup']:.2f}x | "
            f"{r['bare_no_heartbeat_speedup']:.2f}x | {original} |"
        )
    lines += [
        "",
        "## 1000 tasks of 1 s (share of the ideal makespan)",
        "",
        "| max_parallel | ideal | leader | target | bare Prefect | bare, same session |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["large"]:
        mark = "✅" if r["meets_target"] else "❌"
        lines.append(
            f"| {r['max_parallel']} | {r['ideal_s']:.0f}s | {mark} {r['leader_share']:.1%} "
            f"({r['leader_s']:.2f}s) | {r['target_share']:.0%} | {r['bare_default_share']:.1%} "
            f"({r['bare_default_s']:.2f}s) | {r['bare_no_heartbeat_share']:.1%} |"
        )
    if all("cpu_budget_ms" in r for r in results["large"]):
        lines += [
            "",
            "CPU per task (leader process + commands + Prefect server) against what the "
            f"{os.cpu_count()} cores give each task when the target is met:",
            "",
            "| max_parallel | leader | bare Prefect | budget at the target |",
            "|---|---|---|---|",
        ]
        for r in results["large"]:
            leader, bare = r["leader_cpu_ms_per_task"], r["bare_cpu_ms_per_task"]
            lines.append(
                f"| {r['max_parallel']} | {leader['total']:.1f} ms ({leader['leader']:.1f} + "
                f"{leader['children']:.1f} + {leader['server']:.1f}) | {bare['total']:.1f} ms "
                f"({bare['leader']:.1f} + {bare['children']:.1f} + {bare['server']:.1f}) | "
                f"{r['cpu_budget_ms']:.1f} ms |"
            )
    ex = results.get("example")
    if ex:
        lines += [
            "",
            "## Example pipeline (examples/multi-agent-config.yml)",
            "",
            "| setup cache | wall | setup | tiers |",
            "|---|---|---|---|",
            f"| cold | {ex['cold']['wall_s']:.1f}s | {ex['cold']['setup_s']:.1f}s | "
            f"{ex['cold']['tiers_s']:.1f}s |",
            f"| warm | {ex['warm']['wall_s']:.1f}s | {ex['warm']['setup_s']:.2f}s | "
            f"{ex['warm']['tiers_s']:.1f}s |",
            "",
            f"A warm cache makes the whole run {ex['warm_speedup']:.1f}x faster.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import add_output_options, write_results

    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-tasks", type=int, default=1000)
    parser.add_argument("--skip-example", action="store_true")
    add_output_options(parser, "1 repeat, 200 large tasks")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.large_tasks = 1, 200

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        directory = Path(tmp)
        os.environ["PREFECT_HOME"] = str(directory / "prefect-home")
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        import prefect

        from benchmarks.common import server_database
        from flows._prefect import local_server, quiet_run_logs

        with server_database(f"bench_{os.getpid()}") as database, local_server(), quiet_run_logs():
            print("10 tasks of 1 s:", flush=True)
            results: dict[str, Any] = {
                "database": database,
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "prefect": prefect.__version__,
                "repeats": args.repeats,
            }
            results["speedup"], results["flow_run_s"] = speedup_series(directory, args.repeats)
            print(f"{args.large_tasks} tasks of 1 s:", flush=True)
            results["large"] = large_runs(directory, args.large_tasks)
            if not args.skip_example:
                print("example pipeline:", flush=True)
                results["example"] = example_cold_warm(directory)
    write_results(args, "pipeline", results, render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
