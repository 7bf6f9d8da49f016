"""Tensors as PyTorch has them: every dtype and 0-d shape through the
package's safetensors reader and writer, deltas in each tensor's dtype, and
a BatchNorm module's state_dict (int64 `num_batches_tracked`) through
weights, delta and load (no hub; tests/python.rs runs the hub)."""

import json
import struct
import unittest

import numpy as np

from kernal_trainer.client import Trainer
from kernal_trainer.tensors import decode, encode_typed


def header_of(payload: bytes) -> dict:
    (n,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8 : 8 + n])


MODEL = {
    "count": (np.array(7, np.int64), "I64"),
    "mean": (np.array([0.25, -1.5]), "F64"),
    "half": (np.array([0.5, 2.0], np.float16), "F16"),
    "brain": (np.array([1.0, -3.0], np.float32), "BF16"),
    "mask": (np.array([True, False]), "BOOL"),
    "small": (np.array([3, 250], np.uint8), "U8"),
    "scale": (np.array(1.5, np.float32), "F32"),
}


class DtypesTest(unittest.TestCase):
    def test_every_dtype_and_0d_shape_round_trips(self):
        arrays = {k: a for k, (a, _) in MODEL.items()}
        dtypes = {k: d for k, (_, d) in MODEL.items()}
        payload = encode_typed(arrays, dtypes)
        h = header_of(payload)
        self.assertEqual({k: h[k]["dtype"] for k in MODEL}, dtypes)
        self.assertEqual(h["count"]["shape"], [])
        back = decode(payload)
        for k, (a, d) in MODEL.items():
            self.assertEqual(back[k].shape, a.shape, k)
            np.testing.assert_array_equal(back[k], a.astype(np.float32) if d == "BF16" else a)
            if d != "BF16":
                self.assertEqual(back[k].dtype, a.dtype, k)

    def test_deltas_keep_0d_and_send_integers_as_int64(self):
        weights = {k: a for k, (a, _) in MODEL.items()}
        dtypes = {k: d for k, (_, d) in MODEL.items()}
        delta = {
            "count": np.array(3, np.int64),
            "mean": np.array([0.5, 0.5]),
            "half": np.array([0.25, 0.25], np.float32),
            "brain": np.array([1.0, 1.0], np.float32),
            "mask": np.array([-1, 0]),
            "small": np.array([-3.0, 5.0]),
            "scale": np.float32(0.5),
        }
        h = header_of(Trainer._encode(delta, weights, None, dtypes))
        self.assertEqual(h["count"], {**h["count"], "dtype": "I64", "shape": []})
        self.assertEqual(h["scale"]["shape"], [])
        self.assertEqual([h[k]["dtype"] for k in ("mean", "half", "brain", "mask", "small")],
                         ["F64", "F16", "BF16", "I64", "I64"])
        # Compression applies to floating tensors only.
        h = header_of(Trainer._encode(delta, weights, "BF16", dtypes))
        self.assertEqual([h[k]["dtype"] for k in ("mean", "half", "count")], ["BF16", "BF16", "I64"])
        back = decode(Trainer._encode(delta, weights, None, dtypes))
        self.assertEqual(int(back["count"]), 3)
        np.testing.assert_array_equal(back["small"], [-3, 5])
        with self.assertRaisesRegex(ValueError, "fractional"):
            Trainer._encode({**delta, "count": np.float64(0.5)}, weights, None, dtypes)
        with self.assertRaisesRegex(ValueError, "shape"):
            Trainer._encode({**delta, "count": np.array([3])}, weights, None, dtypes)


try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


@unittest.skipIf(torch is None, "PyTorch is not installed")
class TorchStateDictTest(unittest.TestCase):
    def test_batchnorm_state_dict_through_weights_delta_and_load(self):
        from kernal_trainer.torch_utils import delta, load_weights, state_dict_to_weights

        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        w = state_dict_to_weights(net.state_dict())
        self.assertEqual(w["1.num_batches_tracked"].shape, ())
        self.assertEqual(w["1.num_batches_tracked"].dtype, np.int64)
        net.train()
        for _ in range(3):
            net(torch.randn(8, 3))
        d = delta(net, w)
        self.assertEqual(int(d["1.num_batches_tracked"]), 3)
        self.assertEqual(d["1.num_batches_tracked"].shape, ())
        payload = Trainer._encode(d, w)
        self.assertEqual(header_of(payload)["1.num_batches_tracked"]["dtype"], "I64")
        fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        load_weights(fresh, decode(encode_typed(state_dict_to_weights(net.state_dict()),
                                                {k: ("I64" if k.endswith("tracked") else "F32")
                                                 for k in w})))
        self.assertEqual(int(fresh.state_dict()["1.num_batches_tracked"]), 3)
        self.assertEqual(fresh.state_dict()["1.num_batches_tracked"].dtype, torch.int64)

    def test_bfloat16_module(self):
        from safetensors.torch import load, save

        from kernal_trainer.torch_utils import state_dict_to_weights

        net = torch.nn.Linear(2, 2).to(torch.bfloat16)
        w = state_dict_to_weights(net.state_dict())
        payload = encode_typed(w, {k: "BF16" for k in w})
        back = load(payload)
        self.assertEqual(back["weight"].dtype, torch.bfloat16)
        self.assertTrue(torch.equal(back["weight"], net.weight.detach()))
        self.assertEqual(decode(save(net.state_dict()))["bias"].dtype, np.float32)


if __name__ == "__main__":
    unittest.main()
