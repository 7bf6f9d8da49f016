"""A kernal trainer whose learning is plain numpy: the hub's MLP
(fc1 -> ReLU -> fc2, softmax cross-entropy) trained with minibatch SGD.

    python examples/numpy_trainer.py --name np_alice --token s3cret --model wine --classes 0
"""

import sys

import numpy as np

from _common import evaluation, load, parser, run


def forward(w, x):
    h = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0.0)
    return h, h @ w["fc2.weight"].T + w["fc2.bias"]


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sgd(weights, x, y, epochs, lr, batch_size, seed):
    w = {k: v.astype(np.float32, copy=True) for k, v in weights.items()}
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            b = order[start:start + batch_size]
            xb, yb = x[b], y[b]
            h, logits = forward(w, xb)
            p = softmax(logits)
            losses.append(float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).mean()))
            g = p
            g[np.arange(len(yb)), yb] -= 1.0
            g /= len(yb)
            gh = (g @ w["fc2.weight"]) * (h > 0)
            w["fc2.weight"] -= lr * g.T @ h
            w["fc2.bias"] -= lr * g.sum(axis=0)
            w["fc1.weight"] -= lr * gh.T @ xb
            w["fc1.bias"] -= lr * gh.sum(axis=0)
    return w, float(np.mean(losses)) if losses else 0.0


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    d = load(args)

    def make(scaled):
        def train(weights, version):
            new, loss = sgd(weights, scaled(d.x_train), d.y_train, args.epochs, args.lr, args.batch_size, version)
            return {k: new[k] - weights[k] for k in weights}, len(d.y_train), loss

        def evaluate(weights, version):
            return evaluation(lambda x: forward(weights, scaled(x))[1], d)

        return train, evaluate

    return run(args, d, make)


if __name__ == "__main__":
    sys.exit(main())
