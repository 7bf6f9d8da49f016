"""The hub's `kernel` model in PyTorch: a byte-level transformer language
model of C source, the same network as `crates/kernal-core/src/kernel/`
(tensor names, shapes, layer norm eps 1e-5, tanh-approximated GELU,
attention scaled by 1/sqrt(16) with a causal mask, learned position
embeddings, output head tied to the token embedding), trained with AdamW on
random windows of the member's code, reporting bits per byte.

    python examples/kernel_trainer.py --name py_alice --specialty networking --token s3cret
    python examples/kernel_trainer.py --name py_me --token s3cret --source ~/src/mydriver
    python examples/kernel_trainer.py evaluate --weights kernel.safetensors linux/fs/ext4 --json

The code is the Rust trainer's: the shipped Linux excerpts
(`data/kernel/corpus.gz`, split by `data/kernel/MANIFEST`) for `networking`,
`graphics` and `security`, a deterministic third of all three for any other
specialty, or `--source DIR` (every `.c`/`.h` file under it, one file in ten
held out by a hash of its path). `evaluate` scores a checkpoint as `kernal
evaluate` does (same files, same windows), so the two can be compared.
Exit codes as `kernal trainer`'s (0 done, 2 refused or bad input, 1 other).
"""

import argparse
import gzip
import json
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _common import exit_code
from kernal_trainer import Trainer
from kernal_trainer.torch_utils import delta, load_weights

CORPUS = Path(__file__).resolve().parents[2] / "data" / "kernel"
VOCAB = 256
HEAD_DIM = 16
SPECIALTIES = ("networking", "graphics", "security")
UNSEEN = "unseen"
# As the Rust trainer (crates/kernal-client/src/kernel.rs and kernel/corpus.rs).
EVAL_WINDOWS = 32
MAX_SOURCE_BYTES = 64 << 20
MAX_SOURCE_FILE_BYTES = 1 << 20


# ---------------------------------------------------------------- the network


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.heads = d // HEAD_DIM

    def forward(self, x):
        b, t, d = x.shape
        # qkv's output features are [q | k | v], each [head][16].
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, HEAD_DIM).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HEAD_DIM))
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        # candle's `gelu` is the tanh approximation.
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = Attention(d)
        self.ln2 = nn.LayerNorm(d, eps=1e-5)
        self.mlp = Mlp(d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class KernelLM(nn.Module):
    """State dict keys are the hub's tensor names: tok_emb.weight [256, d],
    pos_emb.weight [context, d], blocks.N.{ln1,attn.qkv,attn.proj,ln2,
    mlp.fc,mlp.proj}.*, ln_f.*; no separate output head (tied)."""

    def __init__(self, d_model=32, layers=2, context=64):
        super().__init__()
        if d_model % HEAD_DIM or d_model <= 0 or layers < 1 or context < 2:
            raise ValueError(f"not a kernel model: d_model {d_model}, layers {layers}, context {context}")
        self.context = context
        self.tok_emb = nn.Embedding(VOCAB, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model, eps=1e-5)

    @staticmethod
    def for_weights(weights):
        """The module whose shapes the hub's (or a checkpoint's) tensors give."""
        if "tok_emb.weight" not in weights or "pos_emb.weight" not in weights:
            raise ValueError("not a kernel checkpoint: no tok_emb.weight or pos_emb.weight tensor")
        d = int(weights["tok_emb.weight"].shape[1])
        context = int(weights["pos_emb.weight"].shape[0])
        layers = sum(1 for k in weights if k.startswith("blocks.") and k.endswith(".ln1.weight"))
        m = KernelLM(d, layers, context)
        load_weights(m, weights)
        return m

    def forward(self, ids):
        """Logits [batch, len, 256] for byte ids [batch, len]: position t predicts byte t + 1."""
        t = ids.shape[1]
        if not 1 <= t <= self.context:
            raise ValueError(f"sequence of {t} bytes; the model takes 1 to {self.context}")
        x = self.tok_emb(ids) + self.pos_emb.weight[:t]
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x) @ self.tok_emb.weight.T


def windows(text, starts, length):
    a = np.frombuffer(text, dtype=np.uint8)
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length + 1)[None, :]
    w = torch.from_numpy(a[idx].astype(np.int64))
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def bits_per_byte(module, text, max_windows):
    """As `KernelSpec::bits_per_byte_vars`: windows of the full context,
    tiling the text when all fit, else `max_windows` evenly spaced."""
    if len(text) < 2:
        return 0.0, 0
    module.eval()
    length = min(module.context, len(text) - 1)
    every = (len(text) - 1) // length
    n = min(every, max(max_windows, 1))
    starts = [i * every // n * length for i in range(n)]
    nats, count = 0.0, 0
    for c in range(0, n, 16):
        x, y = windows(text, starts[c:c + 16], length)
        loss = F.cross_entropy(module(x).reshape(-1, VOCAB), y.reshape(-1), reduction="sum")
        nats += float(loss)
        count += y.numel()
    return nats / count / math.log(2), count


# ---------------------------------------------------------------- the code


def fnv1a(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def shipped_corpus(root=CORPUS):
    """[(heldout, specialty, path, bytes)] from corpus.gz and its MANIFEST."""
    text = gzip.decompress((Path(root) / "corpus.gz").read_bytes())
    files, off = [], 0
    for line in (Path(root) / "MANIFEST").read_text().splitlines():
        if not line.strip():
            continue
        kind, specialty, n, path = line.split(" ", 3)
        files.append((kind == "heldout", specialty, path, text[off:off + int(n)]))
        off += int(n)
    if off != len(text):
        raise ValueError(f"{root}: {len(text) - off} bytes not listed in MANIFEST")
    return files


def specialty_texts(specialty, root=CORPUS):
    """(train, own held-out, all held-out) as `KernelTexts::for_specialty`."""
    files = shipped_corpus(root)
    train = [f for f in files if not f[0] and f[1] != UNSEEN]
    held_all = b"".join(f[3] for f in files if f[0] and f[1] != UNSEEN)
    if specialty in SPECIALTIES:
        mine = b"".join(f[3] for f in train if f[1] == specialty)
        own = b"".join(f[3] for f in files if f[0] and f[1] == specialty)
    else:
        shard = fnv1a(specialty) % 3
        mine = b"".join(f[3] for i, f in enumerate(train) if i % 3 == shard)
        own = held_all
    return mine, own, held_all


def source_files(roots, exts):
    """As `corpus::source_files`: matching files under the roots in path
    order (symbolic links not followed), bounded per file and in all."""
    paths = []
    for root in map(Path, roots):
        if root.is_file():
            paths.append(root)
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such file or directory")
        stack = [root]
        while stack:
            for e in os.scandir(stack.pop()):
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False) and any(e.name.endswith(x) for x in exts):
                    paths.append(Path(e.path))
    out, total = [], 0
    for p in sorted(set(paths), key=lambda p: p.parts):
        n = p.stat().st_size
        if n == 0 or n > MAX_SOURCE_FILE_BYTES or total + n > MAX_SOURCE_BYTES:
            continue
        b = p.read_bytes()
        total += len(b)
        out.append((p, b))
    if not out:
        raise FileNotFoundError(f"no file ending in {', '.join(exts)} under {', '.join(map(str, roots))}")
    return out


def split_source(files):
    """As `corpus::split_source`: one file in ten held out by path hash."""
    train, held = b"", b""
    if len(files) >= 10:
        train = b"".join(b for p, b in files if fnv1a(str(p)) % 10)
        held = b"".join(b for p, b in files if not fnv1a(str(p)) % 10)
    if not train or not held:
        every = b"".join(b for _, b in files)
        cut = len(every) - len(every) // 10
        return every[:cut], every[cut:]
    return train, held


# ---------------------------------------------------------------- the trainer


class KernelLearner:
    """Local training and evaluation on one member's code, with the Rust
    trainer's defaults (40 AdamW steps of 16 windows, lr 0.005, no weight
    decay) and its weighting (`num_examples` = bytes predicted)."""

    def __init__(self, train, own_heldout, all_heldout, steps=40, batch=16, lr=5e-3, seed=0, report=None):
        self.train_text, self.own, self.all = train, own_heldout, all_heldout
        self.steps, self.batch, self.lr = steps, batch, lr
        self.seed = seed
        self.module = None
        # Called with each evaluation: the package's `evaluation` event
        # carries accuracies only, so the example says its bits per byte.
        self._report = report

    def _load(self, weights):
        if self.module is None:
            self.module = KernelLM.for_weights(weights)
        else:
            load_weights(self.module, weights)
        if len(self.train_text) < self.module.context + 1:
            raise ValueError(f"{len(self.train_text)} bytes of training code; the model needs {self.module.context + 1}")
        return self.module

    def train(self, weights, version):
        m = self._load(weights)
        m.train()
        rng = random.Random(self.seed ^ (version * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF))
        opt = torch.optim.AdamW(m.parameters(), lr=self.lr, weight_decay=0.0)
        win, losses = m.context, []
        for _ in range(self.steps):
            starts = [rng.randrange(len(self.train_text) - win) for _ in range(self.batch)]
            x, y = windows(self.train_text, starts, win)
            loss = F.cross_entropy(m(x).reshape(-1, VOCAB), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        return delta(m, weights), self.steps * self.batch * win, float(np.mean(losses)) / math.log(2)

    def evaluate(self, weights, version):
        m = self._load(weights)
        own, n = bits_per_byte(m, self.own, EVAL_WINDOWS)
        every, n = (own, n) if self.all == self.own else bits_per_byte(m, self.all, EVAL_WINDOWS)
        r = {
            "specialty_bits_per_byte": own,
            "global_bits_per_byte": every,
            "loss": every * math.log(2),
            "num_examples": int(n),
        }
        if self._report is not None:
            self._report({"event": "bits_per_byte", "version": version, **r})
        return r


def train_main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hub", default="ws://127.0.0.1:5001")
    p.add_argument("--name", required=True)
    p.add_argument("--specialty", default="networking")
    p.add_argument("--token", required=True)
    p.add_argument("--model", default="kernel")
    p.add_argument("--source", action="append", default=[], help="train on this tree (repeatable)")
    p.add_argument("--ext", default=".c,.h")
    p.add_argument("--corpus", default=str(CORPUS), help="directory of corpus.gz and MANIFEST")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--threads", type=int, default=1, help="PyTorch threads (the hub and others share the cores)")
    p.add_argument("--versions", type=int, default=None, help="stop after training on this many versions (exit 0)")
    p.add_argument("--compress", choices=["f16", "bf16"], default=None)
    p.add_argument("--json", action="store_true", help="one JSON event per line")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or not args.lr > 0:
        print("error: --steps and --batch-size must be at least 1 and --lr positive", file=sys.stderr)
        return 2
    torch.set_num_threads(max(args.threads, 1))
    torch.manual_seed(fnv1a(args.name) & 0xFFFFFFFF)
    try:
        if args.source:
            train, held = split_source(source_files(args.source, [e for e in args.ext.split(",") if e]))
            texts = (train, held, held)
        else:
            texts = specialty_texts(args.specialty, args.corpus)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    def report(e):
        if args.json:
            sys.stdout.write(json.dumps(e) + "\n")
            sys.stdout.flush()
        else:
            print(f"version {e['version']}: own code {e['specialty_bits_per_byte']:.3f} bits/byte, "
                  f"all code {e['global_bits_per_byte']:.3f}", file=sys.stderr)

    learner = KernelLearner(*texts, steps=args.steps, batch=args.batch_size, lr=args.lr,
                            seed=fnv1a(args.name), report=report)
    trainer = Trainer(
        args.hub, args.name, args.specialty, args.token,
        model=args.model, train=learner.train, evaluate=learner.evaluate,
        max_versions=args.versions, json_events=args.json, compress=args.compress,
        on_event=None if args.json else lambda e: print(e, file=sys.stderr),
    )
    return exit_code(trainer.run, args)


def evaluate_main(argv):
    p = argparse.ArgumentParser(prog="kernel_trainer.py evaluate", description="Bits per byte of a kernel checkpoint, as `kernal evaluate`.")
    p.add_argument("--weights", required=True)
    p.add_argument("paths", nargs="+")
    p.add_argument("--ext", default=".c,.h")
    p.add_argument("--max-bytes", type=int, default=1 << 20)
    p.add_argument("--json", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(max(args.threads, 1))
    from safetensors.numpy import load_file

    try:
        module = KernelLM.for_weights(load_file(args.weights))
        files = source_files(args.paths, [e for e in args.ext.split(",") if e])
    except Exception as e:  # a file that is not a checkpoint, no matching file
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = b"".join(b for _, b in files)
    if len(text) < 2:
        print("error: the files hold fewer than 2 bytes", file=sys.stderr)
        return 2
    bpb, n = bits_per_byte(module, text, max(args.max_bytes // module.context, 1))
    report = {"model": "kernel", "bits_per_byte": bpb, "bytes": n, "files": len(files), "text_bytes": len(text)}
    print(json.dumps(report) if args.json else f"{bpb:.4f} bits per byte on {n} bytes predicted ({len(files)} file(s), {len(text)} bytes)")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["evaluate"]:
        return evaluate_main(argv[1:])
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
