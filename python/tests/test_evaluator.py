"""The evaluator's reports as the hub reads them, and the sentence a hub
never reached gets (the Rust client says the same)."""

import unittest

import kernal_trainer
from kernal_trainer.errors import HubUnreachable
from kernal_trainer.evaluator import report_message


class ReportTest(unittest.TestCase):
    def test_figures_and_named_metrics(self):
        m = report_message(4, {"accuracy": 0.5, "loss": 1, "num_examples": 36, "f1": 0.25, "bits_per_byte": None})
        self.assertEqual(
            m,
            {"type": "evaluator_report", "version": 4, "num_examples": 36, "accuracy": 0.5, "loss": 1.0,
             "metrics": {"f1": 0.25}},
        )

    def test_num_examples_is_required(self):
        with self.assertRaises(ValueError):
            report_message(1, {"accuracy": 0.5})

    def test_exported(self):
        self.assertIn("Evaluator", kernal_trainer.__all__)
        self.assertTrue(callable(kernal_trainer.Evaluator))


class NeverReachedTest(unittest.TestCase):
    def test_says_never_reached_with_address_and_reason(self):
        e = HubUnreachable("ws://127.0.0.1:5999/v1/trainers/ws", "[Errno 111] Connect call failed", 5)
        s = str(e)
        self.assertIn("never reached the hub at 127.0.0.1:5999", s)
        self.assertIn("Errno 111", s)


if __name__ == "__main__":
    unittest.main()
