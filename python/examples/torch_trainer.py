"""A kernal trainer whose learning is PyTorch: an nn.Module whose state_dict
names are the hub's tensor names (fc1.weight, fc1.bias, fc2.weight,
fc2.bias), trained with torch.optim.SGD.

    python examples/torch_trainer.py --name torch_bob --token s3cret --model wine --classes 1
"""

import sys

import numpy as np
import torch
from torch import nn

from _common import classes, own_scaling, parser
from kernal_trainer import Trainer
from kernal_trainer.data import load_csv, only_classes, split
from kernal_trainer.torch_utils import delta, load_weights


class Mlp(nn.Module):
    def __init__(self, inputs, hidden, classes):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    torch.manual_seed(0)
    x, y = load_csv(args.data)
    x_train, y_train, x_test, y_test = split(x, y)
    x_train, y_train = only_classes(x_train, y_train, classes(args.classes))
    x_test, y_test = only_classes(x_test, y_test, classes(args.classes))
    own = own_scaling(np.concatenate([x_train, x_test]))
    module = {}

    def scaled(v):
        return torch.from_numpy(
            np.ascontiguousarray(trainer.normalise(v, fallback=own), dtype=np.float32)
        )

    def net(weights):
        # The shapes come from the hub: fc1.weight is [hidden, inputs].
        hidden, inputs = weights["fc1.weight"].shape
        if "m" not in module:
            module["m"] = Mlp(inputs, hidden, weights["fc2.weight"].shape[0])
        load_weights(module["m"], weights)
        return module["m"]

    def train(weights, version):
        m = net(weights)
        opt = torch.optim.SGD(m.parameters(), lr=args.lr)
        xs, ys = scaled(x_train), torch.from_numpy(y_train)
        g = torch.Generator().manual_seed(version)
        losses = []
        m.train()
        for _ in range(args.epochs):
            for b in torch.randperm(len(ys), generator=g).split(args.batch_size):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(m(xs[b]), ys[b])
                loss.backward()
                opt.step()
                losses.append(loss.item())
        return delta(m, weights), len(ys), float(np.mean(losses))

    def evaluate(weights, version):
        m = net(weights)
        with torch.no_grad():
            logits = m(scaled(x_test))
            ys = torch.from_numpy(y_test)
            return {
                "global_accuracy": float((logits.argmax(1) == ys).float().mean()),
                "loss": float(nn.functional.cross_entropy(logits, ys)),
                "num_examples": int(len(ys)),
            }

    trainer = Trainer(
        args.hub, args.name, args.specialty, args.token,
        model=args.model, train=train, evaluate=evaluate, features=x_train,
        max_versions=args.versions, json_events=args.json,
        on_event=None if args.json else lambda e: print(e, file=sys.stderr),
    )
    s = trainer.run()
    return 0 if s.acked > 0 or args.versions == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
