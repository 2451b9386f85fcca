"""Ask a Prefect server what became of flow runs: state, where they ran, their task runs.

    python docker/check-run.py [FLOW_RUN_ID ...] [--deployment NAME] [--last N] [--wait S]
                               [--min-tasks N]

With no id, the newest N flow runs (of the deployment, when given). --wait polls until each
run is in a final state, for at most S seconds. Exit code 0 when every run shown Completed
and has at least --min-tasks task runs (default 1), 1 otherwise. Uses PREFECT_API_URL;
only the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from typing import Any

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def api(path: str, body: dict[str, Any] | None = None) -> Any:
    base = os.environ["PREFECT_API_URL"].rstrip("/")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path, data=data, method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("ids", nargs="*")
    parser.add_argument("--deployment", help="deployment name (flow/deployment or deployment)")
    parser.add_argument("--last", type=int, default=1)
    parser.add_argument("--wait", type=float, default=0.0)
    parser.add_argument("--min-tasks", type=int, default=1)
    args = parser.parse_args()

    ids = list(args.ids)
    if not ids:
        body: dict[str, Any] = {"sort": "EXPECTED_START_TIME_DESC", "limit": args.last}
        if args.deployment:
            name = args.deployment.split("/")[-1]
            body["deployments"] = {"name": {"any_": [name]}}
        ids = [run["id"] for run in api("/flow_runs/filter", body)]
    if not ids:
        print("no flow runs found")
        return 1

    deadline = time.monotonic() + args.wait
    ok = True
    for run_id in ids:
        run = api(f"/flow_runs/{run_id}")
        while run["state_type"] not in FINAL and time.monotonic() < deadline:
            time.sleep(2)
            run = api(f"/flow_runs/{run_id}")
        tasks = api("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200})
        states: dict[str, int] = {}
        for task in tasks:
            states[task["state_name"]] = states.get(task["state_name"], 0) + 1
        infra = run.get("infrastructure_pid") or "-"
        worker = run.get("work_queue_name") or "-"
        print(
            f"flow run {run['name']} {run_id}: {run['state_name']} "
            f"(start {run.get('start_time')}, run time {run.get('total_run_time')} s)\n"
            f"  deployment_id={run.get('deployment_id')} work_queue={worker} "
            f"infrastructure_pid={infra}\n"
            f"  task runs: {len(tasks)} {dict(sorted(states.items()))}"
        )
        for task in sorted(tasks, key=lambda t: t.get("start_time") or ""):
            print(f"    {task['name']:<36} {task['state_name']}")
        ok = ok and run["state_type"] == "COMPLETED" and len(tasks) >= args.min_tasks
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
