"""How much load one Locust process makes (and two, distributed), against the cheapest route.

    python benchmarks/load_generator.py [--seconds 10] [--users 64]

Starts one dropsim server (embedded backends) and runs Locust FastHttpUsers in a closed loop on
`GET /health/live` with no wait, once with one process and once as master + 2 workers, sampling
the load processes' CPU. When Locust sits near 100 % of a core it is the generator's ceiling;
when it does not, the server is the limit. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from dropsim.testing import ServerProcess, embedded_settings

LOCUSTFILE = """
from locust import FastHttpUser, task


class Hello(FastHttpUser):
    @task
    def hello(self):
        self.client.get("/health/live")
"""


def run_locust(
    url: str, users: int, seconds: int, workers: int, directory: Path
) -> dict[str, float]:
    locustfile = directory / "hello_locustfile.py"
    locustfile.write_text(LOCUSTFILE)
    prefix = directory / f"w{workers}"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "--host",
        url,
        "-u",
        str(users),
        "-r",
        str(users),
        "--run-time",
        f"{seconds}s",
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    if workers > 1:
        command += ["--processes", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(process.pid)
    samples: list[float] = []
    time.sleep(2)  # spawned and warm
    while process.poll() is None:
        try:
            family = [root, *root.children(recursive=True)]
            for member in family:
                member.cpu_percent(None)
            time.sleep(1)
            samples.append(sum(member.cpu_percent(None) for member in family))
        except psutil.Error:
            break
    process.wait()
    with open(f"{prefix}_stats.csv") as stats:
        total = next(row for row in csv.DictReader(stats) if row["Name"] == "Aggregated")
    return {
        "req_s": float(total["Requests/s"]),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "failures": float(total["Failure Count"]),
        "locust_cpu": sorted(samples)[len(samples) // 2] if samples else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--users", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        with ServerProcess(embedded_settings(directory)) as server:
            print(f"Locust FastHttpUser -> GET /health/live, {args.users} users, {args.seconds} s")
            print("| load processes | req/s | p50 ms | p99 ms | failures | Locust CPU (median) |")
            print("|---|---|---|---|---|---|")
            for workers in (1, 2):
                figures = run_locust(server.url, args.users, args.seconds, workers, directory)
                print(
                    f"| {workers} | {figures['req_s']:,.0f} | {figures['p50_ms']:.0f} | "
                    f"{figures['p99_ms']:.0f} | {figures['failures']:.0f} | "
                    f"{figures['locust_cpu']:.0f} % |"
                )


if __name__ == "__main__":
    main()
