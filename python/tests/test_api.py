"""The package's error policy against the protocol's table, its update
encoding, its version and its command line (no hub; the end-to-end runs are
in the repository's tests/python.rs)."""

import json
import re
import struct
import subprocess
import sys
import unittest
from pathlib import Path

import numpy as np
from safetensors.numpy import load

import kernal_trainer
from kernal_trainer import errors
from kernal_trainer.client import Trainer
from kernal_trainer.download import http_url
from kernal_trainer.tensors import encode, from_bf16_bits, to_bf16_bits

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "docs" / "PROTOCOL.md"
ERROR_TABLE = ROOT / "crates" / "kernal-core" / "src" / "protocol" / "errors.rs"


def protocol_actions():
    """code -> client action from docs/PROTOCOL.md's error table (generated
    from the Rust declaration and checked against it by a Rust test)."""
    out = {}
    header = None
    for line in PROTOCOL.read_text().splitlines():
        if line.startswith("| code |"):
            header = [c.strip() for c in line.strip("|").split("|")]
            continue
        if header and not line.startswith("|"):
            break
        if header and line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0].strip("`")] = cells[header.index("client")]
    return out


def declared_actions():
    """code -> client action from the Rust declaration itself
    (`error_table!` in crates/kernal-core/src/protocol/errors.rs), so the
    package is checked against the source even if docs/PROTOCOL.md were not
    regenerated."""
    out = {}
    entry = re.compile(r'^\s*[A-Z]\w* = "([a-z0-9_]+)", \w+, \d+, (\w+),', re.M)
    for code, action in entry.findall(ERROR_TABLE.read_text()):
        snake = re.sub(r"(?<!^)([A-Z])", r"_\1", action).lower()
        out[code] = "—" if snake == "not_sent" else snake
    return out


class ErrorTableTest(unittest.TestCase):
    def test_actions_are_the_protocol_tables(self):
        table = protocol_actions()
        self.assertGreater(len(table), 30, "the table was found")
        sent = {c: a for c, a in table.items() if a != "—"}
        self.assertEqual(errors.ACTIONS, sent)

    def test_actions_are_the_declared_tables_both_ways(self):
        declared = declared_actions()
        self.assertGreater(len(declared), 30, "the declaration was found")
        # Every declared code is in the protocol page with the same action,
        # and the page has no code the declaration lacks.
        self.assertEqual(protocol_actions(), declared)
        known = {errors.GIVE_UP, errors.DROP_UPDATE, errors.RESEND, errors.RECONNECT}
        for code, act in declared.items():
            if act == "—":
                # A code the hub never sends a trainer has no action here.
                self.assertNotIn(code, errors.ACTIONS, code)
            else:
                self.assertIn(act, known, code)
                self.assertEqual(errors.ACTIONS.get(code), act, code)
        # And the package knows no code the hub does not declare.
        self.assertEqual(set(errors.ACTIONS) - set(declared), set())

    def test_refusals_no_retry_changes_give_up(self):
        for code in ["message_too_large", "tensor_mismatch", "bad_token", "revoked", "unknown_model"]:
            self.assertEqual(errors.action(code), errors.GIVE_UP, code)
        self.assertEqual(errors.action("stale_update"), errors.DROP_UPDATE)
        self.assertEqual(errors.action("some_future_code"), errors.RECONNECT)


def header_of(payload: bytes) -> dict:
    (n,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8 : 8 + n])


class EncodingTest(unittest.TestCase):
    def test_f32_f16_and_bf16_updates(self):
        w = {"a": np.zeros((2, 3), np.float32), "s": np.zeros((), np.float32)}
        d = {"a": np.linspace(-1, 1, 6).reshape(2, 3), "s": np.float32(0.5)}
        f32 = load(Trainer._encode(d, w))
        np.testing.assert_allclose(f32["a"], d["a"], rtol=1e-6)
        self.assertEqual(f32["s"].shape, ())
        f16 = Trainer._encode(d, w, "F16")
        self.assertEqual(header_of(f16)["a"]["dtype"], "F16")
        np.testing.assert_allclose(load(f16)["a"], d["a"], atol=1e-3)
        bf16 = Trainer._encode(d, w, "BF16")
        h = header_of(bf16)
        self.assertEqual(h["a"]["dtype"], "BF16")
        start = 8 + struct.unpack("<Q", bf16[:8])[0]
        lo, hi = h["a"]["data_offsets"]
        back = from_bf16_bits(np.frombuffer(bf16[start + lo : start + hi], dtype="<u2")).reshape(2, 3)
        np.testing.assert_allclose(back, d["a"], rtol=1 / 128)
        self.assertLess(len(bf16), len(Trainer._encode(d, w)))

    def test_bf16_rounds_to_nearest_even_like_torch(self):
        x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e-3], np.float32)
        bits = to_bf16_bits(x)
        # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even one (1.0).
        self.assertEqual(from_bf16_bits(bits)[1], 1.0)
        self.assertEqual(from_bf16_bits(bits)[2], 1.015625)
        self.assertEqual(from_bf16_bits(bits)[3], -2.5)

    def test_unknown_compression_is_refused(self):
        with self.assertRaises(ValueError):
            Trainer("127.0.0.1:1", "a", "s", "t", train=lambda w, v: (w, 1, 0.0), compress="f8")

    def test_headers_are_aligned_safetensors(self):
        p = encode({"x": np.ones(3, np.float32)}, "F32")
        (n,) = struct.unpack("<Q", p[:8])
        self.assertEqual(n % 8, 0)
        np.testing.assert_array_equal(load(p)["x"], np.ones(3))


class PackageTest(unittest.TestCase):
    def test_one_version_and_typed(self):
        from kernal_trainer._version import __version__

        self.assertEqual(kernal_trainer.__version__, __version__)
        self.assertTrue((Path(kernal_trainer.__file__).parent / "py.typed").exists())
        pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
        self.assertNotIn('\nversion = "', pyproject, "the version is written only in _version.py")

    def test_module_command_line(self):
        r = subprocess.run(
            [sys.executable, "-m", "kernal_trainer", "--help"], capture_output=True, text=True
        )
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("download", r.stdout)
        r = subprocess.run(
            [sys.executable, "-m", "kernal_trainer", "--version"], capture_output=True, text=True
        )
        self.assertIn(kernal_trainer.__version__, r.stdout)

    def test_rest_urls(self):
        self.assertEqual(http_url("127.0.0.1:5001"), "http://127.0.0.1:5001")
        self.assertEqual(http_url("ws://h:1/v1/trainers/ws"), "http://h:1")
        self.assertEqual(http_url("wss://hub.example/"), "https://hub.example")


if __name__ == "__main__":
    unittest.main()
