"""A kernal trainer whose learning is PyTorch, through `TorchTrainer`: an
nn.Module whose state_dict names are the hub's tensor names (fc1.weight,
fc1.bias, fc2.weight, fc2.bias), trained with torch.optim.SGD. Its shapes
come from the hub's current version (`download`).

    python examples/torch_trainer.py --name torch_bob --token s3cret --model wine --classes 1 --versions 10
"""

import sys

import numpy as np
import torch
from torch import nn

from _common import evaluation, exit_code, load, own_scaling, parser, specialty
from kernal_trainer import download
from kernal_trainer.torch_trainer import TorchTrainer


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
    own = own_scaling(np.concatenate([d.x_train, d.x_test]))
    trainer = None

    def tensor(x):
        # The model's frozen normalisation once there is one, else this file's own scaling.
        return torch.from_numpy(np.ascontiguousarray(trainer.normalise(x, fallback=own), dtype=np.float32))

    shuffle = torch.Generator().manual_seed(0)

    def batches():
        xs, ys = tensor(d.x_train), torch.from_numpy(d.y_train)
        order = torch.randperm(len(ys), generator=shuffle)
        return [(xs[b], ys[b]) for b in order.split(args.batch_size)]

    def start():
        nonlocal trainer
        # fc1.weight is [hidden, inputs], fc2.weight [classes, hidden].
        w = download(args.hub, args.model)
        hidden, inputs = w["fc1.weight"].shape
        module = Mlp(inputs, hidden, w["fc2.weight"].shape[0])
        trainer = TorchTrainer(
            args.hub, args.name, specialty(args), args.token, module,
            train_loader=batches,
            optimizer=lambda params: torch.optim.SGD(params, lr=args.lr),
            local_epochs=args.epochs,
            eval_fn=lambda m, version: evaluation(lambda x: m(tensor(x)).numpy(), d),
            model=args.model, features=d.x_train, max_versions=args.versions,
            json_events=args.json, compress=args.compress,
            on_event=None if args.json else lambda e: print(e, file=sys.stderr),
        )
        return trainer.run()

    return exit_code(start, args)


if __name__ == "__main__":
    sys.exit(main())
