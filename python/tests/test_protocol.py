"""Unit tests of the package's pure parts (no hub): statistics,
normalisation, URLs and the update encoding. The end-to-end runs against a
real hub are in the repository's tests/python.rs."""

import json
import unittest

import numpy as np
from safetensors.numpy import load

from kernal_trainer import FeatureStats, Normalisation, Trainer
from kernal_trainer.client import ws_url


class StatsTest(unittest.TestCase):
    def test_stats_are_counts_sums_and_squares(self):
        s = FeatureStats.of([[1.0, 10.0], [3.0, 10.0]])
        self.assertEqual(s.count, 2)
        self.assertEqual(s.sum, [4.0, 20.0])
        self.assertEqual(s.sumsq, [10.0, 200.0])
        m = s.message()
        self.assertEqual(m["type"], "stats")
        json.dumps(m)  # plain JSON numbers, no NaN

    def test_stats_need_rows_by_features(self):
        with self.assertRaises(ValueError):
            FeatureStats.of([1.0, 2.0])


class NormalisationTest(unittest.TestCase):
    def test_only_frozen_statistics_are_applied(self):
        self.assertIsNone(Normalisation.from_wire(None))
        self.assertIsNone(Normalisation.from_wire({"state": "pooling", "features": 2}))
        n = Normalisation.from_wire(
            {"state": "frozen", "features": 2, "mean": [2.0, 10.0], "std": [1.0, 1.0], "trainers": 2}
        )
        self.assertEqual(n.trainers, 2)
        np.testing.assert_allclose(n.apply([[3.0, 10.0]]), [[1.0, 0.0]])

    def test_normalise_falls_back_only_without_normalisation(self):
        t = Trainer("127.0.0.1:1", "a", "s", "t", train=lambda w, v: (w, 1, 0.0))
        x = np.array([[2.0]], dtype=np.float32)
        np.testing.assert_allclose(t.normalise(x, fallback=lambda r: r * 0), [[0.0]])
        t.model_normalises = True  # pooling: no fallback, inputs as they are
        np.testing.assert_allclose(t.normalise(x, fallback=lambda r: r * 0), [[2.0]])


class WireTest(unittest.TestCase):
    def test_urls(self):
        self.assertEqual(ws_url("127.0.0.1:5001"), "ws://127.0.0.1:5001/v1/trainers/ws")
        self.assertEqual(ws_url("https://hub.example/"), "wss://hub.example/v1/trainers/ws")
        self.assertEqual(ws_url("ws://h:1/v1/trainers/ws"), "ws://h:1/v1/trainers/ws")

    def test_delta_is_checked_and_encoded_as_float32_safetensors(self):
        w = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
        d = {"a": np.ones((2, 3)), "b": np.ones(3)}
        out = load(Trainer._encode(d, w))
        self.assertEqual(out["a"].dtype, np.float32)
        self.assertEqual(out["a"].shape, (2, 3))
        with self.assertRaises(ValueError):
            Trainer._encode({"a": np.ones((3, 2)), "b": np.ones(3)}, w)
        with self.assertRaises(ValueError):
            Trainer._encode({"a": np.ones((2, 3))}, w)
        with self.assertRaises(ValueError):
            Trainer._encode({**d, "c": np.ones(1)}, w)


if __name__ == "__main__":
    unittest.main()
