"""`dserve status`: a front's `/worker-status` and `/stats` as a table or JSON.

    dserve status                          # http://127.0.0.1:8000
    dserve status --url http://node:8000 --monitor --interval 2
    dserve status --json                   # {"stats": {...}, "workers": {...}}

Against a single server (no `/worker-status`) it shows that server's `/health` and
`/batch/stats` instead. Exit status: 0 when the server answered, 1 when it did not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import httpx


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("DSERVE_URL", "http://127.0.0.1:8000"),
        help="the server (default $DSERVE_URL, else http://127.0.0.1:8000)",
    )
    p.add_argument("--monitor", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --monitor (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON (with --monitor: one object per line)")
    p.add_argument("--api-key", default=os.environ.get("DSERVE_STATUS_API_KEY"), help="bearer key, if the server requires one")
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds (default 10)")


def fetch(url: str, api_key: str | None = None, timeout: float = 10.0) -> dict:
    """{"stats": ..., "workers": ...} from a front; {"single": ...} from a plain server."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    base = url.rstrip("/")
    with httpx.Client(timeout=timeout, headers=headers) as client:
        r = client.get(base + "/worker-status")
        if r.status_code == 404:
            health = client.get(base + "/health").json()
            batch = client.get(base + "/batch/stats").json()
            return {"url": base, "single": {"health": health, "batch_stats": batch}}
        r.raise_for_status()
        workers = r.json()
        stats = client.get(base + "/stats").json()
        return {"url": base, "stats": stats, "workers": workers}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render(data: dict) -> str:
    if "single" in data:
        h, b = data["single"]["health"], data["single"]["batch_stats"]
        return (
            f"dserve server {data['url']}  (single server, no front)\n"
            f"status {h.get('status')}  model {h.get('model')}  device {h.get('device', '-')}\n"
            f"queue {b.get('queue_depth', 0)}  running {b.get('running_requests', 0)}  "
            f"avg batch {_fmt(b.get('avg_batch_size'))}  steps {b.get('total_steps', 0)}  "
            f"histogram {b.get('batch_size_histogram', {})}"
        )
    s, ws = data["stats"], data["workers"]
    lines = [
        f"dserve front {data['url']}  system {s['system_status']}  healthy {s['healthy_workers']}/{s['total_workers']}  "
        f"routed {s['total_requests']}  in flight {s['requests_in_flight']}  failed {s['requests_failed']}  restarts {s['worker_restarts']}",
        f"avg batch {_fmt(s.get('avg_batch_size'))}  steps {s.get('total_steps', 0)}  steps/s {_fmt(s.get('steps_per_second'))}  "
        f"queue {s.get('queue_depth', 0)}  running {s.get('running_requests', 0)}  histogram {s.get('batch_size_histogram', {})}",
        "",
    ]
    cols = [
        "id",
        "device",
        "port",
        "pid",
        "status",
        "restarts",
        "in_flight",
        "routed",
        "failed",
        "queue",
        "running",
        "avg_batch",
        "steps",
    ]
    rows = [cols]
    for w in ws["workers"]:
        b = w.get("batch_stats") or {}
        rows.append(
            [
                _fmt(w["id"]),
                _fmt(w["device"]),
                _fmt(w["port"]),
                _fmt(w["pid"]),
                _fmt(w["status"]),
                _fmt(w["restarts"]),
                _fmt(w["in_flight"]),
                _fmt(w["requests_routed"]),
                _fmt(w["requests_failed"]),
                _fmt(w["queue_depth"]),
                _fmt(w["running_requests"]),
                _fmt(b.get("avg_batch_size")),
                _fmt(b.get("total_steps")),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        return _loop(args)
    except KeyboardInterrupt:
        return 0


def _loop(args: argparse.Namespace) -> int:
    while True:
        try:
            data = fetch(args.url, args.api_key, args.timeout)
            ok = True
        except (httpx.HTTPError, ValueError) as exc:
            data, ok = {"url": args.url, "error": f"{type(exc).__name__}: {exc}"}, False
        if args.monitor and not args.json and sys.stdout.isatty():
            sys.stdout.write("\033[H\033[J")  # clear the screen
        if args.json:
            print(json.dumps(data, indent=None if args.monitor else 2), flush=True)
        elif ok:
            print(render(data), flush=True)
        else:
            print(f"dserve status: {args.url} did not answer: {data['error']}", file=sys.stderr, flush=True)
        if not args.monitor:
            return 0 if ok else 1
        if not args.json:
            print(f"\n{time.strftime('%H:%M:%S')}  refreshing every {args.interval:g}s, Ctrl-C to stop", flush=True)
        time.sleep(args.interval)
