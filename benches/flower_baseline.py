#!/usr/bin/env python3
"""Flower baseline for `kernal bench`: the same work, done by Flower.

FedAvg over N no-op NumPy clients talking gRPC to one Flower server on loopback, a flat float32
model of P parameters, R rounds, every client in every round, no evaluation. Each client answers
a round with the parameters it got plus a fixed delta (no learning), like kernal's synthetic
trainers. Prints seconds per round (median, min, max) and the server's peak RSS, so the figure
stands next to `kernal bench --params P --trainers N --versions R` measured in the same run.

Needs flwr (1.41 measured) and numpy, e.g. in a venv outside the repository:

    python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install "flwr==1.41.*" numpy
    /tmp/flwr-venv/bin/python benches/flower_baseline.py --params 1000000 --clients 10 --rounds 20

Seconds per round are the intervals between the server's aggregations (the first round, which
includes connecting, is left out), so they cover sending the model to every client, their
answers, and FedAvg: what kernal's seconds per version cover.
"""

import argparse
import json
import multiprocessing as mp
import os
import resource
import socket
import statistics
import sys
import time
import warnings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_client(address: str, params: int) -> None:
    warnings.filterwarnings("ignore")
    import flwr as fl
    import numpy as np

    delta = np.full(params, 1e-3, dtype=np.float32)

    class NoOp(fl.client.NumPyClient):
        def get_parameters(self, config):
            return [np.zeros(params, dtype=np.float32)]

        def fit(self, parameters, config):
            return [parameters[0] + delta], 1, {}

        def evaluate(self, parameters, config):
            return 0.0, 1, {}

    fl.client.start_client(server_address=address, client=NoOp().to_client(), insecure=True)


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    import flwr as fl
    import numpy as np
    from flwr.common import ndarrays_to_parameters

    stamps = []

    class Timed(fl.server.strategy.FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            stamps.append(time.perf_counter())
            return out

    n = args.clients
    strategy = Timed(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        min_evaluate_clients=0,
        initial_parameters=ndarrays_to_parameters([np.zeros(args.params, dtype=np.float32)]),
    )
    port = free_port()
    address = f"127.0.0.1:{port}"
    ctx = mp.get_context("spawn")
    clients = [ctx.Process(target=run_client, args=(address, args.params), daemon=True) for _ in range(n)]
    for c in clients:
        c.start()
    t0 = time.perf_counter()
    fl.server.start_server(
        server_address=address,
        config=fl.server.ServerConfig(num_rounds=args.rounds),
        strategy=strategy,
    )
    total = time.perf_counter() - t0
    for c in clients:
        c.join(timeout=30)
        if c.is_alive():
            c.kill()
    if len(stamps) < 2:
        print("flower_baseline: fewer than two rounds completed", file=sys.stderr)
        return 1
    per_round = [b - a for a, b in zip(stamps, stamps[1:])]
    result = {
        "flwr": fl.__version__,
        "params": args.params,
        "clients": n,
        "rounds": args.rounds,
        "seconds_per_round_median": statistics.median(per_round),
        "seconds_per_round_min": min(per_round),
        "seconds_per_round_max": max(per_round),
        "total_seconds": total,
        "server_peak_rss_mib": peak_rss_mib(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"flower {result['flwr']}: {args.params} params x {n} clients, {args.rounds} rounds: "
            f"{result['seconds_per_round_median']:.3f} s/round median "
            f"(min {result['seconds_per_round_min']:.3f}, max {result['seconds_per_round_max']:.3f}), "
            f"server peak RSS {result['server_peak_rss_mib']:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
