"""`TorchTrainer`: a PyTorch module trained on the hub's versions, in the
spirit of Flower's `NumPyClient` or a Lightning `fit`: give the module, the
data (a loader, or your own step) and an optimizer factory; the package
loads each version into the module, trains locally, sends `trained -
version` and reports your evaluation. Built on `Trainer`, which stays the
low-level API (a function from weights to a delta).
"""

from typing import Any, Callable, Dict, Iterable, Optional, Union

import numpy as np

from .client import Summary, Trainer
from .torch_utils import delta, load_weights

Batch = Any


def _default_optimizer(params):
    import torch

    return torch.optim.SGD(params, lr=0.1)


def _batch_size(batch: Batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(len(first))


class TorchTrainer:
    """Trains `module` on every new version of a hub model.

    - `train_loader`: an iterable of `(inputs, targets)` batches (a
      `torch.utils.data.DataLoader`, for example), read again every epoch,
      or a function returning one (called every epoch: for inputs that
      depend on the model's normalisation, frozen only after the first
      welcome). The loss is `loss_fn(module(inputs), targets)`
      (cross-entropy unless given), or `train_step(module, batch) -> loss
      tensor` for anything else (the package calls `backward()` and steps
      the optimizer).
    - `optimizer`: `params -> torch.optim.Optimizer`, made fresh for each
      version (local state does not carry across versions); SGD(lr=0.1) by
      default.
    - `local_epochs` passes over the loader per version, or `local_steps`
      batches (whichever is given; steps win).
    - `eval_fn(module, version) -> dict` with any of `specialty_accuracy`,
      `global_accuracy`, `loss`, `num_examples` (module in eval mode, no
      gradients), reported to the hub as a federated evaluation.

    Other keyword arguments (`model`, `max_versions`, `features`,
    `compress`, `json_events`, `on_event`, ...) go to `Trainer`.
    """

    def __init__(
        self,
        hub: str,
        name: str,
        specialty: str,
        token: str,
        module,
        *,
        train_loader: Union[Iterable[Batch], Callable[[], Iterable[Batch]]],
        train_step: Optional[Callable[[Any, Batch], Any]] = None,
        optimizer: Callable[[Any], Any] = _default_optimizer,
        loss_fn: Optional[Callable[[Any, Any], Any]] = None,
        local_epochs: int = 1,
        local_steps: Optional[int] = None,
        eval_fn: Optional[Callable[[Any, int], Optional[Dict[str, Any]]]] = None,
        **trainer_kwargs,
    ):
        if local_steps is None and local_epochs < 1:
            raise ValueError("local_epochs must be at least 1")
        if local_steps is not None and local_steps < 1:
            raise ValueError("local_steps must be at least 1")
        self.module = module
        self._loader = train_loader
        self._step = train_step
        self._optimizer = optimizer
        self._loss_fn = loss_fn
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self._eval_fn = eval_fn
        self.trainer = Trainer(
            hub,
            name,
            specialty,
            token,
            train=self._train,
            evaluate=self._evaluate if eval_fn is not None else None,
            **trainer_kwargs,
        )

    @property
    def summary(self) -> Summary:
        return self.trainer.summary

    def normalise(self, x, fallback=None):
        """Raw inputs as the model wants them (see `Trainer.normalise`)."""
        return self.trainer.normalise(x, fallback)

    def run(self) -> Summary:
        """Runs until `max_versions` are trained and acknowledged; raises
        `TrainerRefused` or `HubUnreachable` when retrying cannot help."""
        return self.trainer.run()

    def _epoch(self) -> Iterable[Batch]:
        return self._loader() if callable(self._loader) else self._loader

    def _loss(self, batch: Batch):
        if self._step is not None:
            return self._step(self.module, batch)
        import torch

        inputs, targets = batch[0], batch[1]
        loss_fn = self._loss_fn or torch.nn.functional.cross_entropy
        return loss_fn(self.module(inputs), targets)

    def _train(self, weights: Dict[str, np.ndarray], version: int):
        load_weights(self.module, weights)
        self.module.train()
        opt = self._optimizer(self.module.parameters())
        losses, examples, steps = [], 0, 0
        epochs = self.local_epochs if self.local_steps is None else None
        done = False
        epoch = 0
        while not done:
            seen = 0
            for batch in self._epoch():
                opt.zero_grad()
                loss = self._loss(batch)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                examples += _batch_size(batch)
                steps += 1
                seen += 1
                if self.local_steps is not None and steps >= self.local_steps:
                    done = True
                    break
            epoch += 1
            if seen == 0:
                raise ValueError("the training data yielded no batch")
            if epochs is not None and epoch >= epochs:
                done = True
        return delta(self.module, weights), examples, float(np.mean(losses))

    def _evaluate(self, weights: Dict[str, np.ndarray], version: int):
        import torch

        load_weights(self.module, weights)
        self.module.eval()
        with torch.no_grad():
            return self._eval_fn(self.module, version)
