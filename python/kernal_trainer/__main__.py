"""`python -m kernal_trainer`: the package's small command line.

    python -m kernal_trainer --version
    python -m kernal_trainer download --hub 127.0.0.1:5001 --model wine --version latest --out wine.safetensors

Exit codes as `kernal trainer`'s: 0 done, 2 refused by the hub (no such
model or version...), 1 other errors (the hub could not be reached).
"""

import argparse
import sys

from ._version import __version__
from .download import download_bytes
from .errors import HubUnreachable, TrainerRefused


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kernal_trainer",
        description="The kernal trainer package. Write a trainer with kernal_trainer.Trainer or "
        "kernal_trainer.TorchTrainer (see python/examples); this command fetches versions.",
    )
    p.add_argument("--version", action="version", version=f"kernal-trainer {__version__}")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("download", help="save a version's weights as a safetensors file")
    d.add_argument("--hub", default="http://127.0.0.1:5001", help="the hub (host:port, http(s):// or ws(s)://)")
    d.add_argument("--model", required=True)
    d.add_argument("--version", dest="model_version", default="latest", help="a version number or latest")
    d.add_argument("--out", required=True, help="file to write")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 0
    try:
        version, body = download_bytes(args.hub, args.model, args.model_version)
    except TrainerRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except HubUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with open(args.out, "wb") as f:
        f.write(body)
    print(f"{args.model} version {version}: {len(body)} bytes written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
