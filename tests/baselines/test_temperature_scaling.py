"""lora-temp-scaling: the temperature fit and the method around it."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd.errors import LRVDError
from lrvd.metrics import accuracy, negative_log_likelihood
from lrvd.protocol import AdapterConfig, TrainConfig, TrainPlan
from lrvd.registry import get_method, list_methods
from lrvd.training import fit, predict
from lrvd_baselines import lora_temp_scaling
from lrvd_baselines.lora_temp_scaling import LoRATempScaling, fit_temperature


def overconfident_logits(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A calibrated-ish 3-class model's logits scaled x10: right argmax often, far too confident."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    logits = torch.randn(n, 3, generator=g)
    logits[torch.arange(n), labels] += 1.0
    return 10.0 * logits, labels


def test_temperature_matches_grid_minimum_and_lowers_nll():
    logits, labels = overconfident_logits()
    t = fit_temperature(logits, labels)
    grid = torch.linspace(1.0, 30.0, 2901, dtype=torch.float64)
    nll = torch.stack([torch.nn.functional.cross_entropy(logits.double() / g, labels) for g in grid])
    assert t > 1.0
    assert t == pytest.approx(float(grid[nll.argmin()]), abs=0.02)
    before = negative_log_likelihood(torch.softmax(logits, -1), labels)
    after = negative_log_likelihood(torch.softmax(logits / t, -1), labels)
    assert after < before
    assert accuracy(torch.softmax(logits / t, -1), labels) == accuracy(torch.softmax(logits, -1), labels)


def test_method_fits_on_val_loader_and_keeps_argmax(tmp_path):
    assert "lora-temp-scaling" in list_methods() and get_method("lora-temp-scaling") is LoRATempScaling
    method = LoRATempScaling()
    assert method.needs_validation
    train, val = make_toy_loader(32, seed=0), make_toy_loader(16, seed=1, shuffle=False)
    plan = TrainPlan(total_steps=4, n_train=32, train=TrainConfig(lr=5e-3, mixed_precision="no"))
    model = method.attach(TinyBertClassifier(), AdapterConfig(r=2, alpha=4), plan)
    fit(method, model, train, plan, device="cpu", progress=False)
    method.after_training(model, train, val)
    assert method.temperature != 1.0
    probs, labels = predict(method, model, val, device="cpu", progress=False)
    raw = torch.cat([torch.softmax(model(b).float(), -1) for b in val])
    assert torch.equal(probs.argmax(-1), raw.argmax(-1))
    method.save_adapter(model, tmp_path)
    again = LoRATempScaling()
    again.load_adapter(again.attach(TinyBertClassifier(), AdapterConfig(r=2, alpha=4), plan), tmp_path)
    assert again.temperature == pytest.approx(method.temperature)


def test_missing_val_loader_warns_and_uses_train():
    method = LoRATempScaling()
    plan = TrainPlan(total_steps=1, n_train=16, train=TrainConfig(mixed_precision="no"))
    model = method.attach(TinyBertClassifier(), AdapterConfig(r=2, alpha=4), plan)
    with pytest.warns(UserWarning, match="no validation loader"):
        method.after_training(model, make_toy_loader(16))
    assert method.temperature > 0


class LogitsModel(torch.nn.Module):
    """Returns the logits stored in the batch: what T is fitted on is then known exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # model_device reads a parameter

    def forward(self, batch):
        return batch["logits"]


def batches(logits: torch.Tensor, labels: torch.Tensor, size: int = 50) -> list[dict[str, torch.Tensor]]:
    return [{"logits": logits[i : i + size], "labels": labels[i : i + size]} for i in range(0, len(labels), size)]


def test_temperature_is_fitted_on_the_validation_loader_not_the_training_one():
    """Over-confident training logits want T > 1, under-confident validation logits T < 1: with a
    validation loader present, T must be the validation optimum."""
    train_logits, train_labels = overconfident_logits(seed=0)
    val_logits, val_labels = overconfident_logits(seed=1)
    val_logits = val_logits / 40.0  # under-confident
    method = LoRATempScaling()
    method.after_training(LogitsModel(), batches(train_logits, train_labels), batches(val_logits, val_labels))
    assert method.temperature < 1.0
    assert method.temperature == pytest.approx(fit_temperature(val_logits, val_labels), rel=1e-6)
    assert fit_temperature(train_logits, train_labels) > 1.0


def test_predict_proba_divides_the_logits_by_t():
    """softmax(logits / T): argmax cannot tell / from ×, the probabilities can."""
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]])
    method = LoRATempScaling()
    method.temperature = 2.5
    probs = method.predict_proba(LogitsModel(), {"logits": logits, "labels": torch.tensor([0, 1])})
    torch.testing.assert_close(probs, torch.softmax(logits / 2.5, dim=-1))


# -- written against surviving mutants (docs/testing.md) -------------------------------------------
def test_params_bounds_and_message():
    assert LoRATempScaling(max_iter=1).params.max_iter == 1  # one L-BFGS iteration is allowed
    for bad, message in (
        ({"max_iter": 0}, "max_iter must be >= 1, got 0"),
        ({"lbfgs_lr": 0.0}, "lbfgs_lr must be > 0, got 0.0"),
        ({"max_iter": 5, "lbfgs_lr": -1.0}, "lbfgs_lr must be > 0, got -1.0"),
    ):
        with pytest.raises(LRVDError) as err:
            LoRATempScaling(**bad)
        assert str(err.value) == message


def test_temperature_is_one_until_fitted_or_when_a_saved_adapter_has_none():
    method = LoRATempScaling()
    assert method.temperature == 1.0
    method.temperature = 3.0
    method.load_extra_state(None, {}, {})
    assert method.temperature == 1.0


def test_a_non_finite_fit_is_a_one_line_error():
    logits = torch.tensor([[float("nan"), 0.0], [0.0, 1.0]])
    with pytest.raises(LRVDError, match=r"^temperature scaling diverged \(non-finite T\)$"):
        fit_temperature(logits, torch.tensor([0, 1]))


def exact_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The NLL minimiser by bisection on its stationarity condition mean(z_y − E_softmax(z/T)[z]) = 0
    (∂NLL/∂T = −mean(z_y − E_p[z]) / T²), independent of any optimiser."""
    z, y = logits.double(), labels.long()
    z_y = z.gather(1, y[:, None]).squeeze(1)

    def excess(log_t: float) -> float:  # > 0 where T is too large (NLL falls with smaller T)
        p = torch.softmax(z / math.exp(log_t), -1)
        return float((z_y - (p * z).sum(-1)).mean())

    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if excess(mid) > 0 else (mid, hi)
    return math.exp(0.5 * (lo + hi))


@pytest.mark.parametrize("scale", [10.0, 100.0])
def test_fit_reaches_the_exact_minimiser_far_from_t_one(scale):
    """T* ≈ 12.5 and ≈ 125: the strong-Wolfe L-BFGS from T = 1 lands within 1e-4 of the exact optimum
    in its 100 iterations (its own gradient tolerance leaves ~1e-5)."""
    logits, labels = overconfident_logits()
    logits = logits * (scale / 10.0)
    t_star = exact_temperature(logits, labels)
    assert t_star == pytest.approx(1.25 * scale, rel=0.01)
    assert fit_temperature(logits, labels) == pytest.approx(t_star, rel=1e-4)


@pytest.mark.parametrize("lr", [0.05, 0.3])
def test_one_lbfgs_iteration_moves_log_t_by_lr_downhill(lr):
    """lbfgs_lr is the step size on log T: L-BFGS' first direction is −g scaled to |g|₁ = 1 (g here
    ≈ −4), and the strong-Wolfe search accepts that step, so one iteration gives T = exp(lr)."""
    logits, labels = overconfident_logits()
    assert fit_temperature(logits, labels, max_iter=1, lr=lr) == pytest.approx(math.exp(lr), rel=1e-12)


def test_after_training_fits_with_the_methods_max_iter_and_lbfgs_lr():
    logits, labels = overconfident_logits(seed=1)
    method = LoRATempScaling(max_iter=1, lbfgs_lr=0.05)
    method.after_training(LogitsModel(), batches(*overconfident_logits(seed=0)), batches(logits, labels))
    assert method.temperature == pytest.approx(math.exp(0.05), rel=1e-12)


def test_fit_temperature_defaults_are_the_methods():
    """A direct call fits what the method fits: max_iter 100 and lbfgs_lr 0.1 (docs/methods.md)."""
    defaults = inspect.signature(fit_temperature).parameters
    params = LoRATempScaling().params
    assert (defaults["max_iter"].default, defaults["lr"].default) == (params.max_iter, params.lbfgs_lr) == (100, 0.1)


def test_missing_val_loader_warning_names_the_fix_and_points_at_the_caller():
    method = LoRATempScaling()
    with pytest.warns(UserWarning) as record:
        method.after_training(LogitsModel(), batches(*overconfident_logits()))
    # stacklevel=2: attributed to the caller of after_training, neither to this module's warn line
    # (stacklevel 1) nor to pytest's frame above the test (3). Not `== __file__`: mutmut's trampoline
    # is one more frame between the test and the method.
    where = Path(record[0].filename)
    assert len(record) == 1 and where != Path(lora_temp_scaling.__file__) and "_pytest" not in where.parts
    assert str(record[0].message) == (
        "lora-temp-scaling: no validation loader given; fitting the temperature on the training set "
        "(hold out a validation split in the caller)"
    )
