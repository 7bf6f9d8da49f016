"""A kernal evaluator: scores every new version of the `wine` MLP (or any
model, given a module factory) on held-out rows and reports it to the hub,
which records it as the version's hub evaluation (the dashboard charts it).
The hub's own evaluation exists only for the built-in models; this is how
any other model gets one. It needs a token an administrator issued:

    curl -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \\
         -d '{"name": "judge"}' http://127.0.0.1:5001/v1/models/wine/evaluators
    python examples/evaluator.py --name judge --token kev_... --model wine --versions 20

The held-out rows are the test part (20 %, stratified, fixed seed) of
`--data`, the rows no example trainer trains on. `--module mod:factory`
scores another model: `factory(weights)` builds a module for the version's
tensors (name -> array), and the rows' last column is the class.
Exit codes as the trainers': 0 done, 2 refused by the hub (bad token,
revoked, unknown model), 1 the hub was never reached.
"""

import argparse
import importlib
import sys

import numpy as np
import torch
from torch import nn

from _common import DEFAULT_DATA, own_scaling
from kernal_trainer import Evaluator, HubUnreachable, TrainerRefused, download
from kernal_trainer.data import load_csv, split


class Mlp(nn.Module):
    """The hub's MLP: its state_dict names are the hub's tensor names."""

    def __init__(self, inputs, hidden, classes):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def mlp_for(weights):
    hidden, inputs = weights["fc1.weight"].shape
    return Mlp(inputs, hidden, weights["fc2.weight"].shape[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hub", default="ws://127.0.0.1:5001")
    p.add_argument("--name", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--model", default="wine")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CSV: features..., label")
    p.add_argument("--module", default=None, help="module:factory building the model from its weights (default: the hub's MLP)")
    p.add_argument("--versions", type=int, default=None, help="stop after this many reports were recorded (exit 0)")
    p.add_argument("--json", action="store_true", help="one JSON event per line")
    args = p.parse_args(argv)

    x, y = load_csv(args.data)
    _, _, x_test, y_test = split(x, y)
    own = own_scaling(x)
    if args.module:
        mod, _, fn = args.module.partition(":")
        factory = getattr(importlib.import_module(mod), fn)
    else:
        factory = mlp_for
    ev = None

    def evaluate(module):
        # The model's frozen normalisation once there is one, else this file's own scaling.
        inputs = torch.from_numpy(np.ascontiguousarray(ev.normalise(x_test, fallback=own), dtype=np.float32))
        module.eval()
        with torch.no_grad():
            logits = module(inputs)
            targets = torch.from_numpy(np.asarray(y_test, dtype=np.int64))
            loss = nn.functional.cross_entropy(logits, targets).item()
        return {
            "accuracy": float((logits.argmax(dim=1) == targets).float().mean()),
            "loss": loss,
            "num_examples": int(len(y_test)),
        }

    def start():
        nonlocal ev
        module = factory(download(args.hub, args.model))
        ev = Evaluator(
            args.hub, args.model, args.name, args.token, evaluate=evaluate, module=module,
            max_versions=args.versions, json_events=args.json,
            on_event=None if args.json else lambda e: print(e, file=sys.stderr),
        )
        return ev.run()

    try:
        start()
    except TrainerRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except HubUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
