"""A CNN with BatchNorm trained by three class-disjoint members, as PyTorch
has it: the model is created on the hub from the module's whole state_dict
(float32 weights and BatchNorm's int64, 0-d `num_batches_tracked`), three
`TorchTrainer`s (digits 0-3, 4-6, 7-9 of the 8x8 digits images) train it
for `--versions` versions, then the newest version is downloaded into a
fresh module with `load_state_dict(strict=True)` and scored on held-out
digits of every class.

    python examples/cnn_batchnorm.py --hub 127.0.0.1:5001 --admin-token "$(cat admin.token)" --versions 20

Prints one JSON line: {"model", "version", "accuracy", "held_out", "seconds"}.
Exit codes as the other examples': 2 when the hub refuses for good, 1 when
it cannot be reached.
"""

import argparse
import csv
import gzip
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save
from torch import nn

from kernal_trainer import Evaluator, HubUnreachable, TrainerRefused
from kernal_trainer.data import only_classes, split
from kernal_trainer.download import http_url
from kernal_trainer.torch_trainer import TorchTrainer
from kernal_trainer.torch_utils import load_version

DIGITS = Path(__file__).resolve().parents[2] / "data" / "digits.csv.gz"
#: The members and the digits each holds (the hub's built-in specialties).
MEMBERS = {"networking": [0, 1, 2, 3], "graphics": [4, 5, 6], "security": [7, 8, 9]}


class Cnn(nn.Module):
    """Two 3x3 convolutions with BatchNorm on 8x8 images, then a linear
    classifier: 3,882 float32 weights, 48 running statistics and two int64
    counters (about 0.7 MFLOP per image trained)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


def load_digits():
    """Images (n, 1, 8, 8) scaled to [0, 1] and labels, split 80/20."""
    with gzip.open(DIGITS, "rt") as f:
        rows = np.array([[float(c) for c in r] for r in csv.reader(f) if r], dtype=np.float32)
    x, y = rows[:, :-1] / 16.0, rows[:, -1].astype(np.int64)
    return split(x.reshape(-1, 1, 8, 8), y)


def create_model(hub: str, token: str, name: str, module: nn.Module, min_updates: int) -> None:
    """POST /v1/models with the module's whole state_dict; an existing model
    of that name is kept (run the example again to train it further)."""
    query = f"name={name}&min_updates={min_updates}&round_timeout_secs=30&strategy=fedavgm&momentum=0.5"
    req = urllib.request.Request(
        f"{http_url(hub)}/v1/models?{query}",
        data=save(module.state_dict()),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
        method="POST",
    )
    try:
        urllib.request.urlopen(req, timeout=60).read()
    except urllib.error.HTTPError as e:
        err = json.loads(e.read() or b"{}")
        if e.code == 409 and "exists" in err.get("message", ""):
            print(f"model {name} exists; training it further", file=sys.stderr)
            return
        raise TrainerRefused(err.get("code", str(e.code)), err.get("message", e.reason)) from None
    except (urllib.error.URLError, OSError) as e:
        raise HubUnreachable(http_url(hub), str(getattr(e, "reason", e)), 1) from None


def start_evaluator(hub: str, admin_token: str, model: str, x_test, y_test) -> Evaluator:
    """Issues an evaluator token (admin) and runs an `Evaluator` scoring each
    version on the held-out digits, in a daemon thread."""
    name = f"cnn_judge_{os.getpid()}"
    req = urllib.request.Request(
        f"{http_url(hub)}/v1/models/{model}/evaluators",
        data=json.dumps({"name": name}).encode(),
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        token = json.loads(urllib.request.urlopen(req, timeout=60).read())["token"]
    except urllib.error.HTTPError as e:
        err = json.loads(e.read() or b"{}")
        raise TrainerRefused(err.get("code", str(e.code)), err.get("message", e.reason)) from None
    except (urllib.error.URLError, OSError) as e:
        raise HubUnreachable(http_url(hub), str(getattr(e, "reason", e)), 1) from None
    xs, ys = torch.from_numpy(x_test), torch.from_numpy(y_test)

    def evaluate(module):
        module.eval()
        with torch.no_grad():
            logits = module(xs)
        return {
            "accuracy": float((logits.argmax(1) == ys).float().mean()),
            "loss": float(nn.functional.cross_entropy(logits, ys)),
            "num_examples": int(len(ys)),
        }

    judge = Evaluator(hub, model, name, token, evaluate=evaluate, module=Cnn())
    threading.Thread(target=judge.run, daemon=True).start()
    return judge


def accuracy(module: nn.Module, x, y) -> float:
    module.eval()
    with torch.no_grad():
        return float((module(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hub", default="ws://127.0.0.1:5001")
    p.add_argument("--admin-token", default=os.environ.get("KERNAL_ADMIN_TOKEN"),
                   help="to create the model (default: $KERNAL_ADMIN_TOKEN)")
    p.add_argument("--token", default="s3cret", help="the members' token")
    p.add_argument("--model", default="cnn")
    p.add_argument("--versions", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--compress", choices=["f16", "bf16"], default=None)
    p.add_argument("--json", action="store_true", help="the members' events as JSON lines on stderr")
    args = p.parse_args(argv)
    if not args.admin_token:
        p.error("--admin-token (or KERNAL_ADMIN_TOKEN) is needed to create the model")
    torch.set_num_threads(1)  # three members share the machine
    torch.manual_seed(0)
    started = time.monotonic()
    x_train, y_train, x_test, y_test = load_digits()
    try:
        create_model(args.hub, args.admin_token, args.model, Cnn(), len(MEMBERS))
    except (TrainerRefused, HubUnreachable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, TrainerRefused) else 1

    # An evaluator scores every version on the held-out digits and reports it
    # to the hub, which records it as the version's hub evaluation (the
    # dashboard charts it): the hub cannot run a CNN itself.
    try:
        judge = start_evaluator(args.hub, args.admin_token, args.model, x_test, y_test)
    except (TrainerRefused, HubUnreachable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, TrainerRefused) else 1

    trainers, failures = [], []
    for i, (specialty, classes) in enumerate(MEMBERS.items()):
        x, y = only_classes(x_train, y_train, classes)
        xs, ys = torch.from_numpy(x), torch.from_numpy(y)
        shuffle = torch.Generator().manual_seed(i)

        def batches(xs=xs, ys=ys, shuffle=shuffle):
            order = torch.randperm(len(ys), generator=shuffle)
            return [(xs[b], ys[b]) for b in order.split(args.batch_size)]

        own_x, own_y = only_classes(x_test, y_test, classes)
        trainers.append(TorchTrainer(
            args.hub, f"cnn_{specialty}", specialty, args.token, Cnn(),
            train_loader=batches,
            optimizer=lambda params: torch.optim.SGD(params, lr=args.lr, momentum=0.9),
            local_epochs=1,
            eval_fn=lambda m, version, own_x=own_x, own_y=own_y: {
                "specialty_accuracy": accuracy(m, own_x, own_y),
                "global_accuracy": accuracy(m, x_test, y_test),
                "num_examples": int(len(y_test)),
            },
            model=args.model, max_versions=args.versions, compress=args.compress,
            on_event=(lambda e: print(json.dumps(e), file=sys.stderr)) if args.json else None,
        ))

    def member(t):
        try:
            t.run()
        except (TrainerRefused, HubUnreachable, ConnectionError) as e:
            failures.append(e)

    threads = [threading.Thread(target=member, args=(t,)) for t in trainers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print(f"error: {failures[0]}", file=sys.stderr)
        return 2 if isinstance(failures[0], TrainerRefused) else 1

    fresh = load_version(Cnn(), args.hub, args.model, "latest")  # strict=True
    latest = f"{http_url(args.hub)}/v1/models/{args.model}/versions/latest"
    # The evaluator's report of the last version, as the hub recorded it.
    hub_eval, deadline = None, time.monotonic() + 60
    while hub_eval is None and time.monotonic() < deadline:
        v = json.loads(urllib.request.urlopen(latest, timeout=60).read())
        hub_eval = (v.get("metrics") or {}).get("eval")
        if hub_eval is None:
            time.sleep(0.2)
    judge.stop()
    print(json.dumps({
        "model": args.model,
        "version": v["version"],
        "accuracy": accuracy(fresh, x_test, y_test),
        "hub_evaluation": hub_eval,
        "held_out": int(len(y_test)),
        "seconds": round(time.monotonic() - started, 1),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
