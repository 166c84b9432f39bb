"""Laplace-LoRA (Yang et al., ICLR 2024): a post-hoc Kronecker-factored Laplace posterior over the LoRA weights.

Training is plain LoRA (MAP). :meth:`LaplaceLoRA.after_training` builds laplace-torch's
``Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")`` at the trained
weights, fits it on the training set and tunes one scalar prior precision, as the authors' scripts
do (github ``adamxyang/laplace-lora``; every default and every deviation: ``docs/methods.md``,
section Laplace-LoRA).

Curvature (``curvature``): the default ``ggn`` is the authors' exact-Fisher KFAC (their fork's ASDL
backend, ``FISHER_EXACT``), one backward pass per class (about C + 1 training epochs per fit).
``ggn-mc`` is a named speed option: the same Fisher estimated from one label per example sampled
from the model's own predictive, one backward pass per batch (about 1.4 epochs for MiniLM); on a
confident model it is a different posterior (``docs/methods.md``, Laplace-LoRA).

"LoRA-only" is enforced by freezing the task head while the Laplace object is built, fitted and
queried (laplace-torch takes every ``requires_grad`` parameter), so memory is bounded by the
adapter: Kronecker factors of size d_in² + r² (A) and r² + d_out² (B) per module.

Predictive (``predictive``):

* ``glm`` (default): the linearised model ``f(x; θ) ≈ f(x; θ*) + J(x)(θ − θ*)`` gives Gaussian logits
  ``N(f(x; θ*), J Σ Jᵀ)``; the probit approximation turns them into probabilities, deterministic.
* ``glm-mc``: the authors' scripts' predictive: the same Gaussian logits, ``logit_samples`` joint
  draws (full C × C covariance, Cholesky with a 1e-6 jitter), mean softmax.
* ``nn``: mean softmax of ``n_samples`` networks with weights drawn from the posterior. With the
  marginal-likelihood prior the posterior sd is about the prior sd, far above the trained LoRA
  weights, so sampled networks are close to random and accuracy falls towards chance.

The GLM predictives need each example's Jacobian of the C logits w.r.t. the adapter weights.
:func:`batched_jacobians` gets all examples of a batch from C backward passes (one per class), the
per-example gradients of every adapted ``nn.Linear`` being ``Σ_tokens g xᵀ`` from the layer's input
``x`` and output gradient ``g`` (what laplace-torch's ASDL/BackPACK backends do for plain networks).
It is plugged in as a laplace-torch backend (:func:`backend_class`), so ``la(x, pred_type="glm")``
uses it; laplace-torch's own ``jacobians`` (``torch.func.jacrev`` over the whole batch output,
B·C backward passes over the whole batch) is the fallback for layers it does not cover.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lrvd.errors import LRVDError, check_each, unknown_choice
from lrvd.sample_record import record_samples
from lrvd.training import move_batch
from lrvd_baselines.lora import LoRA
from lrvd_baselines.peft_adapters import model_device, seeded

PREDICTIVES = ("glm", "glm-mc", "nn")
TUNINGS = ("marglik", "gridsearch")
#: laplace-torch curvature backends for the KFAC fit: name -> (backend class name, backend kwargs)
CURVATURES = {
    "ggn": ("CurvlinopsGGN", {}),  # exact GGN/Fisher KFAC: one backward pass per class
    "ggn-mc": ("CurvlinopsGGN", {"stochastic": True}),  # Monte-Carlo Fisher KFAC: one backward pass
    "ef": ("CurvlinopsEF", {}),  # empirical Fisher KFAC (gradients at the true labels): one backward pass
}
KFAC_PREFIX = "laplace.kfac."
MC_JITTER = 1e-6  # the authors' scripts: cholesky(f_var + 1e-6 I)
MC_CHUNK = 10_000  # logit samples per chunk of the glm-mc predictive (bounds its memory)


@dataclass
class LaplaceLoRAParams:
    predictive: str = field(
        default="glm",
        metadata={
            "help": "glm: linearised predictive, probit link (default) | glm-mc: the authors' joint-logit Monte Carlo "
            "over the same Gaussian logits | nn: mean of n_samples sampled networks; posterior sd is about "
            "the prior sd, far above the LoRA weights, so sampled networks are near random (accuracy drops)"
        },
    )
    n_samples: int = field(default=10, metadata={"help": "posterior weight samples of the nn predictive"})
    logit_samples: int = field(
        default=100_000,
        metadata={"help": "joint logit samples per example of the glm-mc predictive (authors' scripts: 100000)"},
    )
    prior_tuning: str = field(
        default="marglik",
        metadata={
            "help": "marglik: maximise the log marginal likelihood over a scalar prior precision (Adam, lr 0.1) | "
            "gridsearch: validation NLL of the predictive on a log grid 1e-4..1e4"
        },
    )
    prior_precision: float = field(
        default=1.0,
        metadata={
            "help": "prior precision the fit starts from; marglik starts its optimisation here (authors: 1.0); "
            "gridsearch replaces it by the best grid value"
        },
    )
    prior_steps: int = field(
        default=100, metadata={"help": "Adam steps of marglik tuning (authors' run_gpt_laplace.sh: 100)"}
    )
    curvature: str = field(
        default="ggn",
        metadata={
            "help": "KFAC curvature: ggn (exact Fisher, one backward pass per class; authors, default) | ggn-mc "
            "(speed option: Fisher from one sampled label per example, one backward pass per batch) | ef "
            "(empirical Fisher at the true labels, one backward pass)"
        },
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "LoRA dropout during training (authors' scripts: 0.1; 0 here, the same MAP as lora)"},
    )
    fit_examples: int = field(
        default=0, metadata={"help": "KFAC on a seeded subset of this many training examples, rescaled to N (0: all)"}
    )

    def __post_init__(self) -> None:
        if self.predictive not in PREDICTIVES:
            raise unknown_choice("Laplace predictive", self.predictive, PREDICTIVES)
        if self.prior_tuning not in TUNINGS:
            raise unknown_choice("Laplace prior tuning", self.prior_tuning, TUNINGS)
        if self.curvature not in CURVATURES:
            raise unknown_choice("Laplace curvature", self.curvature, tuple(CURVATURES))
        check_each(self, ">= 0", ("n_samples",), lambda v: v >= 0)
        check_each(self, "> 0", ("prior_precision",), lambda v: v > 0)
        if self.logit_samples < 1 or self.prior_steps < 0:
            raise LRVDError(
                f"logit_samples must be >= 1 and prior_steps >= 0, got {self.logit_samples}, {self.prior_steps}"
            )
        if self.fit_examples < 0:
            raise LRVDError(f"fit_examples must be >= 0 (0 = the whole training set), got {self.fit_examples}")


class DictLogits(nn.Module):
    """laplace-torch's view of the classifier: ``forward(batch_dict) -> logits`` on the model's device."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._batch: Any = None  # the batch whose logits are kept (reusing_logits)
        self._logits: torch.Tensor | None = None

    @contextlib.contextmanager
    def reusing_logits(self, batch: Any) -> Iterator[None]:
        """Within the block, a second forward of the very same ``batch`` object returns the first
        one's logits (detached) instead of running the network again."""
        self._batch, self._logits = batch, None
        try:
            yield
        finally:
            self._batch = self._logits = None

    def forward(self, batch):
        if self._logits is not None and batch is self._batch:
            return self._logits
        logits = self.model(move_batch(batch, model_device(self.model)))
        if batch is self._batch:
            self._logits = logits.detach()
        return logits


# -- Jacobians -------------------------------------------------------------------------------------
def linear_owners(model: nn.Module, params: list[nn.Parameter]) -> list[nn.Linear] | None:
    """The ``nn.Linear`` modules owning ``params`` (LoRA's A and B), or None if some parameter lives elsewhere."""
    owners, covered = [], set()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            mine = [p for p in (module.weight, module.bias) if p is not None and p.requires_grad]
            if mine:
                owners.append(module)
                covered.update(id(p) for p in mine)
    return owners if covered == {id(p) for p in params} else None


def batched_jacobians(
    model: nn.Module, batch: Any, params: list[nn.Parameter]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-example Jacobians ``[B, C, P]`` of the logits w.r.t. ``params`` (in order) and the logits ``[B, C]``.

    One forward pass records every adapted layer's input ``x`` and output; then, per class c, one
    backward pass of ``Σ_i f_ic`` gives each layer's output gradient ``g``, and example i's gradient
    is ``Σ_rows,tokens g xᵀ`` over its own rows. Examples do not interact in the forward pass
    (eval mode), so this equals the exact per-example Jacobian. The rows of example i are the i-th
    contiguous block of a layer's leading dimension (B rows, or B·K for K choices per question).
    Returns None where that structure does not hold (a parameter outside ``nn.Linear``, a layer whose
    leading dimension is not a multiple of B), for the caller's exact fallback.
    """
    owners = linear_owners(model, params)
    if owners is None:
        return None
    calls: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []

    def record(module, inputs, output):
        calls.append((module, inputs[0].detach(), output))

    hooks = [m.register_forward_hook(record) for m in owners]
    try:
        with torch.enable_grad():
            logits = model(batch)  # [B, C]
    finally:
        for h in hooks:
            h.remove()
    n, n_classes = logits.shape
    if not calls or any(x.dim() < 2 or x.shape[0] % n for _, x, _ in calls):
        return None
    grads = {id(p): logits.new_zeros(n, n_classes, p.numel()) for p in params}
    outputs = [out for _, _, out in calls]
    for c in range(n_classes):
        out_grads = torch.autograd.grad(logits[:, c].sum(), outputs, retain_graph=c < n_classes - 1, allow_unused=True)
        for (module, x, _), g in zip(calls, out_grads):
            if g is None:
                continue
            g, x = g.reshape(n, -1, g.shape[-1]), x.reshape(n, -1, x.shape[-1])  # [B, rows·tokens, d]
            if module.weight.requires_grad:
                grads[id(module.weight)][:, c] += torch.einsum("bto,bti->boi", g, x).flatten(1)
            if module.bias is not None and module.bias.requires_grad:
                grads[id(module.bias)][:, c] += g.sum(1)
    return torch.cat([grads[id(p)] for p in params], dim=-1), logits.detach()


class BatchedJacobians:
    """Mixin for a laplace-torch curvature backend: GLM Jacobians from :func:`batched_jacobians`, and
    a KFAC fit with one forward pass per batch instead of two.

    laplace-torch's curvlinops ``kron`` runs the network inside the KFAC pass (forward + backward)
    and then once more, only to return the batch's loss (which enters the marginal likelihood). That
    second forward is about a quarter of the fit (forward + backward cost about 3 forwards):
    :meth:`DictLogits.reusing_logits` answers it with the KFAC pass's own logits, so the loss and the
    factors are the same numbers for less.
    """

    def kron(self, x, y, N, **kwargs):
        if not isinstance(self.model, DictLogits):
            return super().kron(x, y, N, **kwargs)
        with self.model.reusing_logits(x):
            return super().kron(x, y, N, **kwargs)

    def jacobians(self, x, enable_backprop: bool = False):
        result = None if enable_backprop else batched_jacobians(self.model, x, self.params)
        return result if result is not None else super().jacobians(x, enable_backprop=enable_backprop)

    def functorch_jacobians(self, x, enable_backprop: bool = False):
        return self.jacobians(x, enable_backprop=enable_backprop)


def backend_class(curvature: str) -> type:
    """laplace-torch backend for ``curvature`` (:data:`CURVATURES`) with batched GLM Jacobians."""
    import laplace.curvature

    base = getattr(laplace.curvature, CURVATURES[curvature][0])
    return type(f"Batched{base.__name__}", (BatchedJacobians, base), {})


def glm_logit_distribution(la, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The linearised predictive's Gaussian logits: mean ``[B, C]`` and covariance ``J Σ Jᵀ`` ``[B, C, C]``."""
    with torch.enable_grad():
        jacobians, f_mu = la.backend.jacobians(batch)
    return f_mu.detach(), la.functional_variance(jacobians).detach()


def joint_logit_mc(f_mu: torch.Tensor, f_var: torch.Tensor, n_samples: int, chunk: int = MC_CHUNK) -> torch.Tensor:
    """Mean softmax of ``n_samples`` draws ``f_mu + L ε``, ``L Lᵀ = f_var + 1e-6 I``, ε ~ N(0, I) per example.

    The authors' scripts' GLM predictive (``mc_corr``): samples of the joint logit vector, so the
    covariance between classes is kept (the probit link uses only its diagonal). The Cholesky factor
    is taken in float64 (a C × C matrix per example).
    """
    eye = torch.eye(f_var.shape[-1], dtype=torch.float64, device=f_var.device)
    scale = torch.linalg.cholesky(f_var.double() + MC_JITTER * eye).to(f_mu.dtype)  # [B, C, C]
    total = torch.zeros_like(f_mu)
    for start in range(0, n_samples, chunk):
        m = min(chunk, n_samples - start)
        eps = torch.randn(m, *f_mu.shape, 1, dtype=f_mu.dtype, device=f_mu.device)  # [m, B, C, 1]
        total += torch.softmax(f_mu + (scale @ eps).squeeze(-1), dim=-1).sum(0)
    return total / n_samples


# -- fitting ---------------------------------------------------------------------------------------
def subset_loader(loader, n_examples: int, seed: int = 0):
    """The first ``n_examples`` of a seeded permutation of ``loader.dataset``, same batching and collate."""
    from torch.utils.data import DataLoader, Subset

    n_total = len(loader.dataset)
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n_examples]
    return DataLoader(
        Subset(loader.dataset, order.tolist()),
        batch_size=loader.batch_size,
        collate_fn=loader.collate_fn,
        shuffle=False,
    )


def fit_on_subset(la, loader, n_examples: int, seed: int = 0) -> None:
    """Fit KFAC on ``n_examples`` of the training set and rescale it to the full set of N examples.

    laplace-torch's KFAC is ``B ⊗ A`` with ``A`` the data-*averaged* input covariance and ``B`` the
    data-*summed* gradient covariance (``_rescale_kron_factors``). On a random subset ``A`` is already
    an unbiased estimate, and ``B`` (and the summed loss used by the marginal likelihood) become
    unbiased after multiplying by N / n, so the subset posterior matches the full one in expectation
    at n / N of the cost.
    """
    n_total = len(loader.dataset)
    if n_examples <= 0 or n_examples >= n_total:
        la.fit(loader)
        return
    la.fit(subset_loader(loader, n_examples, seed))
    scale = n_total / n_examples
    for factors in la.H_facs.kfacs:
        factors[0].mul_(scale)  # B (the gradient factor) of [B, A]; a lone bias factor [B] alike
    la.H = la.H_facs.decompose(damping=la.damping)
    la.loss = la.loss * scale
    la.n_data = n_total


@contextlib.contextmanager
def head_frozen(model) -> Any:
    head = [p for p in model.head_parameters() if p.requires_grad]
    for p in head:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in head:
            p.requires_grad_(True)


class LaplaceLoRA(LoRA):
    """LoRA + post-hoc Kronecker-factored Laplace over the adapter weights."""

    name = "laplace-lora"
    trains_like = "lora"  # its adapter is trained as LoRA's: selection reuses LoRA's chosen training settings
    description = "Laplace-LoRA (post-hoc KFAC Laplace over LoRA weights, laplace-torch)"
    Params = LaplaceLoRAParams
    posthoc_fit = posterior_params = sampled_predictive = True

    def __init__(self, **hyper_params: Any) -> None:
        super().__init__(**hyper_params)
        self.laplace = None
        self.val_loader = None

    @property
    def default_n_samples(self) -> int:  # type: ignore[override]
        return self.params.n_samples

    def set_validation_loader(self, loader) -> None:
        """Validation batches for ``prior_tuning="gridsearch"``."""
        self.val_loader = loader

    def build_laplace(self, model):
        from laplace import Laplace

        with head_frozen(model):
            return Laplace(
                DictLogits(model),
                "classification",
                subset_of_weights="all",
                hessian_structure="kron",
                prior_precision=self.params.prior_precision,
                backend=backend_class(self.params.curvature),
                backend_kwargs=dict(CURVATURES[self.params.curvature][1]),
                dict_key_x="input_ids",
                dict_key_y="labels",
            )

    @property
    def needs_validation(self) -> bool:  # type: ignore[override]
        """Grid-search prior tuning scores on the validation split; marglik needs none."""
        return self.params.prior_tuning == "gridsearch"

    def after_training(self, model, train_loader, val_loader=None) -> None:
        """Fit KFAC at the trained weights, then tune the prior precision."""
        if val_loader is not None:
            self.val_loader = val_loader
        if self.params.prior_tuning == "gridsearch" and self.val_loader is None:
            raise LRVDError("prior_tuning='gridsearch' needs set_validation_loader(loader) before after_training")
        la = self.build_laplace(model)
        with head_frozen(model):
            fit_on_subset(
                la, train_loader, self.params.fit_examples, seed=self.plan.train.seed if self.plan is not None else 0
            )
            self.tune_prior(la)
        self.laplace = la

    def tune_prior(self, la) -> None:
        """Scalar prior precision ("homo" in the authors' scripts), starting from ``prior_precision``."""
        import warnings

        p = self.params
        if p.prior_tuning == "marglik":
            with warnings.catch_warnings():  # laplace-torch warns that the link of `la(x)` must match; unused here
                warnings.simplefilter("ignore", UserWarning)
                la.optimize_prior_precision(
                    pred_type="glm",
                    method="marglik",
                    n_steps=p.prior_steps,
                    lr=1e-1,
                    init_prior_prec=p.prior_precision,
                    prior_structure="scalar",
                )
            return
        sampled = p.predictive == "nn"
        la.optimize_prior_precision(
            pred_type="nn" if sampled else "glm",
            method="gridsearch",
            val_loader=self.val_loader,
            prior_structure="scalar",
            link_approx="mc" if sampled else "probit",
            n_samples=max(1, p.n_samples),
        )

    @torch.no_grad()
    def predict_proba(self, model, batch, n_samples=None) -> torch.Tensor:
        """``n_samples=0``: the MAP LoRA; otherwise the ``predictive`` (``n_samples`` matters only for ``nn``)."""
        n = self.resolve_n_samples(n_samples)
        if self.laplace is None or n == 0:
            return super().predict_proba(model, batch, 0)
        la, device, kind = self.laplace, model_device(model), self.params.predictive
        with head_frozen(model):
            if kind == "glm":
                with torch.enable_grad():
                    return la(batch, pred_type="glm", link_approx="probit").float()
            if kind == "glm-mc":
                f_mu, f_var = glm_logit_distribution(la, batch)
                with seeded(self.next_sample_seed(), device):
                    return joint_logit_mc(f_mu, f_var, self.params.logit_samples).float()
            with seeded(self.next_sample_seed(), device):
                draws = la.predictive_samples(batch, pred_type="nn", n_samples=n).float()  # [n, B, C]
            record_samples(draws)
            return draws.mean(dim=0)

    def parameter_counts(self, model) -> dict[str, int]:
        """``variational``: entries of the Kronecker factors (d_out² + d_in² per LoRA matrix)."""
        counts = super().parameter_counts(model)
        head = {id(p) for p in model.head_parameters()}
        counts["variational"] = sum(
            sum(d * d for d in p.shape) for p in model.parameters() if p.requires_grad and id(p) not in head
        )
        return counts

    # -- persistence -----------------------------------------------------------------------------
    def extra_state(self, model):
        if self.laplace is None:
            return {}, {}
        state = self.laplace.state_dict()
        tensors = {"laplace.mean": state["mean"], "laplace.prior_precision": state["prior_precision"]}
        for i, factors in enumerate(state["H"]):
            for j, f in enumerate(factors):
                tensors[f"{KFAC_PREFIX}{i}.{j}"] = f
        config = {
            "laplace": {
                "loss": float(state["loss"]),
                "n_data": int(state["n_data"]),
                "n_outputs": int(state["n_outputs"]),
                "sigma_noise": float(state["sigma_noise"]),
                "temperature": float(state["temperature"]),
            }
        }
        return tensors, config

    def load_extra_state(self, model, tensors, config) -> None:
        if "laplace" not in config:
            return
        kfacs: dict[int, dict[int, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(KFAC_PREFIX):
                i, j = map(int, key[len(KFAC_PREFIX) :].split("."))
                kfacs.setdefault(i, {})[j] = value
        la = self.build_laplace(model)
        meta = config["laplace"]
        state = {
            "mean": tensors["laplace.mean"],
            "H": [[kfacs[i][j] for j in sorted(kfacs[i])] for i in sorted(kfacs)],
            "loss": torch.tensor(meta["loss"]),
            "prior_mean": la.prior_mean,
            "prior_precision": tensors["laplace.prior_precision"],
            "sigma_noise": torch.tensor(meta["sigma_noise"]),
            "n_data": meta["n_data"],
            "n_outputs": meta["n_outputs"],
            "likelihood": la.likelihood,
            "temperature": meta["temperature"],
            "enable_backprop": la.enable_backprop,
            "cls_name": type(la).__name__,
        }
        with head_frozen(model):
            la.load_state_dict(state)
        self.laplace = la
