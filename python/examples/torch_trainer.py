"""A kernal trainer whose learning is PyTorch: an nn.Module whose state_dict
names are the hub's tensor names (fc1.weight, fc1.bias, fc2.weight,
fc2.bias), trained with torch.optim.SGD.

    python examples/torch_trainer.py --name torch_bob --token s3cret --model wine --classes 1
"""

import sys

import numpy as np
import torch
from torch import nn

from _common import load, parser, run
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
    d = load(args)
    module = {}

    def net(weights):
        # The shapes come from the hub: fc1.weight is [hidden, inputs].
        hidden, inputs = weights["fc1.weight"].shape
        if "m" not in module:
            module["m"] = Mlp(inputs, hidden, weights["fc2.weight"].shape[0])
        load_weights(module["m"], weights)
        return module["m"]

    def make(scaled):
        def tensor(x):
            return torch.from_numpy(np.ascontiguousarray(scaled(x), dtype=np.float32))

        def train(weights, version):
            m = net(weights)
            opt = torch.optim.SGD(m.parameters(), lr=args.lr)
            xs, ys = tensor(d.x_train), torch.from_numpy(d.y_train)
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
                logits = m(tensor(d.x_test))
                ys = torch.from_numpy(d.y_test)
                return {
                    "global_accuracy": float((logits.argmax(1) == ys).float().mean()),
                    "loss": float(nn.functional.cross_entropy(logits, ys)),
                    "num_examples": int(len(ys)),
                }

        return train, evaluate

    return run(args, d, make)


if __name__ == "__main__":
    sys.exit(main())
