"""``bench cost --layers``: single adapted layers against the authors' formulation of the same op.

Each row times one op of the suite's layer (:class:`lrvd.layers.LRVDLinear`,
:class:`lrvd_baselines.blob.BLoBLinear`, :func:`lrvd.inject.mc_predict_proba`) and the same op as
the method's authors write it, re-derived here from their papers' equations and the structure of
their layers (never copied): BayesLoRA's local reparameterisation through the full variance matrices
(``x² @ A_varᵀ``, a second matmul through ``B_mu²``, ``sqrt`` under autograd), its predictive as a
loop of S sampled passes, BLoB's flipout with separate mean and noise paths through B. Tests check
that each re-derivation gives the suite's layer's numbers draw for draw
(``tests/bench/test_cost.py``), so a ratio compares two ways of computing the same thing.

Timing: one thread is what the table is for (run under ``OMP_NUM_THREADS=1``); each round times the
suite's op and the reference op back to back, in alternating order, each as an inner loop of enough
calls to last a few milliseconds; the ratio is the median over rounds of the per-round ratio, with
its IQR. On CPU the times are the process's CPU time (a neighbour's load does not count), on CUDA
wall time with synchronisation. ``compile=True`` wraps both sides of every training-step row in
``torch.compile``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lrvd_bench.cost.harness import cpu_timed, timed
from lrvd_bench.cost.stats import median_iqr, ratio

#: (row key, Markdown header) of the layer table.
LAYER_COLUMNS = [
    ("op", "op"),
    ("shape", "d × d, r"),
    ("ours_ms", "suite ms"),
    ("ref_ms", "reference ms"),
    ("reference", "reference"),
    ("ratio", "suite / reference"),
    ("ratio_iqr", "IQR"),
    ("target", "target"),
    ("met", "met"),
]


@dataclass
class LayerCostConfig:
    """Shapes and repeats of ``bench cost --layers``."""

    shapes: list[tuple[int, int]] = field(default_factory=lambda: [(384, 8), (1024, 64)])
    tokens: int = 512
    n_samples: int = 10
    rounds: int = 20
    warmup: int = 3
    min_seconds: float = 0.005
    device: str = "cpu"
    compile: bool = False
    seed: int = 0


# -- the authors' formulations, re-derived --------------------------------------------------------
def authors_local_reparam(layer, x):
    """BayesLoRA's sampled forward with local reparameterisation, as the authors' layer computes it:
    the per-rank variance expanded to A's and B's shapes, v_s = x² A_varᵀ and
    v_y = v_s (B_mu²)ᵀ + m_s² B_varᵀ + v_s B_varᵀ through matmuls, y = W x + s (m_y + √(v_y + 1e-12) ε)."""
    import torch

    log_s2 = layer.rank_log_sigma2.clamp(-20.0, 2.0)
    a_var = log_s2.view(-1, 1).expand_as(layer.A_mu).exp()
    b_var = log_s2.view(1, -1).expand_as(layer.B_mu).exp()
    h = x.to(layer.A_mu.dtype)
    m_s = h @ layer.A_mu.t()
    v_s = h.pow(2) @ a_var.t()
    m_y = m_s @ layer.B_mu.t()
    v_y = v_s @ layer.B_mu.pow(2).t() + m_s.pow(2) @ b_var.t() + v_s @ b_var.t()
    eps = torch.randn_like(m_y)
    return layer.base_layer(x) + layer.scaling * (m_y + eps * torch.sqrt(v_y + 1e-12))


def authors_predictive(layer, x, n_samples: int):
    """The authors' S-sample predictive: a loop of S sampled passes, mean of the softmax."""
    import torch

    total = None
    for _ in range(n_samples):
        p = torch.softmax(authors_local_reparam(layer, x).float(), dim=-1)
        total = p if total is None else total + p
    return total / n_samples


def authors_blob(layer, x):
    """BLoB's sampled forward as the authors' wrapper computes it: the LoRA mean path s·B(M x), then
    signs r, t as uniform(−1, 1) signs per row, E = G² ∘ ε, and the noise path s·B(((x ∘ r) Eᵀ) ∘ t)."""
    import torch

    h = x.to(layer.lora_A.dtype)
    out = layer.base_layer(x) + ((h @ layer.lora_A.t()) @ layer.lora_B.t()) * layer.scaling
    r_in = torch.ones_like(h).uniform_(-1, 1).sign()
    t_out = torch.ones((*h.shape[:-1], layer.r), device=h.device, dtype=h.dtype).uniform_(-1, 1).sign()
    e = layer.lora_A_std_sqrt.square() * torch.randn_like(layer.lora_A)
    noise = (((h * r_in) @ e.t()) * t_out) @ layer.lora_B.t()
    return out + noise * layer.scaling


# -- the suite's side ------------------------------------------------------------------------------
def one_layer_model(layer):
    """``layer`` as a model of a dict batch ``{"x": [rows, d]}`` whose d_out outputs are logits, so
    :func:`lrvd.inject.mc_predict_proba` runs on it exactly as on a classifier."""
    from torch import nn

    class OneLayer(nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, batch):
            return self.inner(batch["x"])

    return OneLayer(layer)


def suite_predictive(model, x, n_samples: int, chunk: int):
    from lrvd.inject import mc_predict_proba

    return mc_predict_proba(model, {"x": x}, n_samples, chunk=chunk)


def make_lrvd(d: int, r: int, device, seed: int, dtype=None):
    """An LRVD layer (local reparameterisation, sampling) with trained-looking means and variances."""
    import torch
    from torch import nn

    from lrvd.layers import LRVDLinear

    torch.manual_seed(seed)
    layer = LRVDLinear(nn.Linear(d, d, device=device, dtype=dtype), r=r, scaling=2.0, local_reparam=True)
    with torch.no_grad():
        layer.B_mu.normal_(0, 0.02)
        layer.rank_log_sigma2.uniform_(-8.0, -2.0)
    layer.sampling = True
    return layer


def make_blob(d: int, r: int, device, seed: int, dtype=None):
    import torch
    from torch import nn

    from lrvd_baselines.blob import BLoBLinear

    torch.manual_seed(seed)
    layer = BLoBLinear(nn.Linear(d, d, device=device, dtype=dtype), r=r, scaling=2.0)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.02)
    layer.sampling = True
    return layer


def make_peft_lora(d: int, r: int, device, seed: int):
    """peft's LoRA layer (what the ``lora`` method trains) on the same base shape."""
    import torch
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear
    from torch import nn

    torch.manual_seed(seed)
    base = nn.Linear(d, d, device=device).requires_grad_(False)
    layer = Linear(base, "default", LoraConfig(r=r, lora_alpha=2 * r), r=r, lora_alpha=2 * r).to(device)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.02)
    return layer


def train_step(fn: Callable[[Any], Any], params: list, x) -> Callable[[], None]:
    """Forward + backward of a sum-of-squares loss through ``fn`` (the op a training step repeats)."""

    def step() -> None:
        for p in params:
            p.grad = None
        fn(x).square().mean().backward()

    return step


def under_no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` called without autograd (prediction)."""

    def call() -> Any:
        import torch

        with torch.no_grad():
            return fn()

    return call


# -- rows ------------------------------------------------------------------------------------------
@dataclass
class Pair:
    """One row: the suite's op against the reference op, both ready to call."""

    op: str
    shape: str
    reference: str
    ours: Callable[[], Any]
    ref: Callable[[], Any]
    target: float = math.nan


def pairs(cfg: LayerCostConfig, device) -> list[Pair]:
    """The rows of the layer table for every shape of ``cfg``."""
    import torch

    from lrvd.inject import default_chunk

    maybe = (lambda f: torch.compile(f, dynamic=False)) if cfg.compile else (lambda f: f)
    out: list[Pair] = []
    for d, r in cfg.shapes:
        shape = f"{d} × {d}, r = {r}"
        x = torch.randn(cfg.tokens, d, device=device)
        lrvd = make_lrvd(d, r, device, cfg.seed)
        lrvd_params = [lrvd.A_mu, lrvd.B_mu, lrvd.rank_log_sigma2]
        out.append(
            Pair(
                "LRVD local-reparameterisation step (forward + backward)",
                shape,
                "authors' formulation",
                train_step(maybe(lrvd), lrvd_params, x),
                train_step(maybe(lambda h, m=lrvd: authors_local_reparam(m, h)), lrvd_params, x),
                1.0,
            )
        )
        lora = make_peft_lora(d, r, device, cfg.seed)
        lora_params = [p for p in lora.parameters() if p.requires_grad]
        out.append(
            Pair(
                "LRVD local-reparameterisation step (forward + backward)",
                shape,
                "peft LoRA step",
                train_step(maybe(lrvd), lrvd_params, x),
                train_step(maybe(lora), lora_params, x),
            )
        )
        model = one_layer_model(lrvd)
        s = cfg.n_samples
        default = default_chunk(model)
        ref_pred = under_no_grad(lambda m=lrvd, h=x, n=s: authors_predictive(m, h, n))
        out.append(
            Pair(
                f"S = {s} predictive, default mc_chunk (here {default or 'memory budget'})",
                shape,
                f"authors' loop of {s} passes",
                under_no_grad(lambda m=model, h=x, n=s: suite_predictive(m, h, n, 0)),
                ref_pred,
                1.0,
            )
        )
        out.append(
            Pair(
                f"S = {s} predictive, all S batched (mc_chunk = {s})",
                shape,
                f"authors' loop of {s} passes",
                under_no_grad(lambda m=model, h=x, n=s: suite_predictive(m, h, n, n)),
                ref_pred,
            )
        )
        blob = make_blob(d, r, device, cfg.seed)
        blob_params = [blob.lora_A, blob.lora_A_std_sqrt, blob.lora_B]
        out.append(
            Pair(
                "BLoB sampled forward",
                shape,
                "authors' formulation",
                under_no_grad(lambda m=blob, h=x: m(h)),
                under_no_grad(lambda m=blob, h=x: authors_blob(m, h)),
                1.0,
            )
        )
        out.append(
            Pair(
                "BLoB sampled step (forward + backward)",
                shape,
                "authors' formulation",
                train_step(maybe(blob), blob_params, x),
                train_step(maybe(lambda h, m=blob: authors_blob(m, h)), blob_params, x),
                1.0,
            )
        )
    return out


def clock(device) -> Callable[[Callable[[], Any]], float]:
    """Seconds of one call: process CPU time on CPU (robust to neighbours), synchronised wall time on CUDA."""
    if device.type == "cuda":
        return lambda fn: timed(fn, device)
    return lambda fn: cpu_timed(fn, device)[1]


def repeated(fn: Callable[[], Any], n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            fn()

    return run


def verdict(ratios: list[float], target: float) -> str:
    """'yes' if the median ratio meets the target; 'within IQR' if it misses but at least a quarter
    of the rounds meet it (the target lies inside the rounds' inter-quartile range: no measurable
    miss); else 'no'. '–' without a target."""
    if not math.isfinite(target):
        return "–"
    if median_iqr(ratios)[0] <= target:
        return "yes"
    return "within IQR" if 4 * sum(r <= target for r in ratios) >= len(ratios) else "no"


def measure_layers(cfg: LayerCostConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time every row of :func:`pairs` in interleaved rounds; one table row per pair."""
    from lrvd.training import resolve_device

    device = resolve_device(cfg.device)
    tick = clock(device)
    rows: list[dict[str, Any]] = []
    for pair in pairs(cfg, device):
        for _ in range(2):  # first calls (and compilation) off the clock
            pair.ours(), pair.ref()
        single = max(tick(pair.ours), tick(pair.ref), 1e-6)
        inner = max(1, math.ceil(cfg.min_seconds / single))
        ours, ref = repeated(pair.ours, inner), repeated(pair.ref, inner)
        t_ours: list[float] = []
        t_ref: list[float] = []
        for rnd in range(cfg.warmup + cfg.rounds):
            if rnd % 2:
                b, a = tick(ref), tick(ours)
            else:
                a, b = tick(ours), tick(ref)
            if rnd >= cfg.warmup:
                t_ours.append(a / inner)
                t_ref.append(b / inner)
        ratios = [ratio(a, b) for a, b in zip(t_ours, t_ref)]
        med, iqr = median_iqr(ratios)
        row = {
            "op": pair.op,
            "shape": pair.shape,
            "ours_ms": 1e3 * median_iqr(t_ours)[0],
            "ref_ms": 1e3 * median_iqr(t_ref)[0],
            "reference": pair.reference,
            "ratio": med,
            "ratio_iqr": iqr,
            "target": f"≤ {pair.target:g}" if math.isfinite(pair.target) else "–",
            "met": verdict(ratios, pair.target),
            "rounds": len(ratios),
            "inner": inner,
        }
        rows.append(row)
        log(f"bench cost --layers: {pair.op}, {pair.shape}, vs {pair.reference}: {med:.3f} (IQR {iqr:.3f})")
    return rows
