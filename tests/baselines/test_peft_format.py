"""Saved adapters are real peft adapters: plain transformers + peft load them in a fresh process.

Every registered method is trained briefly, saved with ``method.save_adapter``, and loaded in a
subprocess that imports only transformers and peft (``PeftModel.from_pretrained``). Its logits must
equal the suite's posterior-mean logits; the temperature comes from the documented sidecar.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, TrainConfig, TrainPlan, get_method, list_methods
from lrvd.inject import lrvd_modules, sampling
from lrvd.pruning import prune_layer
from lrvd.training import fit, seed_everything

CASES = {
    "lora": {},
    "mc-dropout-lora": {},
    "lora-temp-scaling": {},
    "laplace-lora": {"n_samples": 3},
    "adalora": {},
    "adalora-ivon": {"lr": 1.0, "hess_init": 100.0},
    "lora-ensemble": {"n_members": 2},
    "bayeslora": {},
    "blob": {"n_samples": 3},
}
SPEC = AdapterConfig(r=4, alpha=8)
STEPS = 20

LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from transformers import AutoModelForSequenceClassification
    from peft import PeftModel

    jobs = json.loads(open(sys.argv[1]).read())
    out = {}
    for job in jobs:
        base = AutoModelForSequenceClassification.from_pretrained(job["base"])
        kwargs = {"adapter_name": job["adapter_name"]} if job.get("adapter_name") else {}
        model = PeftModel.from_pretrained(base, job["adapter"], **kwargs).eval()
        batch = np.load(job["batch"])
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(batch["input_ids"]),
                           attention_mask=torch.from_numpy(batch["attention_mask"])).logits
        out[job["key"]] = logits.numpy()
        out[job["key"] + ":type"] = np.array(model.peft_config[model.active_adapter].peft_type.value)
    np.savez(sys.argv[2], **out)
    print(sorted(m for m in sys.modules if m.split(".")[0] in ("lrvd", "lrvd_baselines", "lrvd_bench")))
""")


def test_every_registered_method_is_covered():
    assert set(CASES) == set(list_methods())


@torch.no_grad()
def perturb_adapters(model, scale=0.5):
    """20 toy steps move adapters by ~1e-3: make every adapter weight O(0.5) so a wrong scaling, a
    missing factor or a lost rank shows in the logits. AdaLoRA's masked triplets (λ = 0) stay masked."""
    g = torch.Generator().manual_seed(7)
    head = {id(p) for p in model.head_parameters()}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in head or "log_sigma2" in name or "std_sqrt" in name:
            continue
        noise = scale * torch.randn(p.shape, generator=g).to(p)
        p.copy_(torch.where(p != 0, noise, p) if "lora_E" in name else p + noise)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (method, model, adapter dir); one shared base model folder and batch file."""
    root = tmp_path_factory.mktemp("peft_format")
    TinyBertClassifier(seed=0).backbone.save_pretrained(root / "base")  # the untouched pretrained model
    loader = make_toy_loader(32, batch_size=8, seed=0)
    batch = next(iter(loader))
    np.savez(root / "batch.npz", input_ids=batch["input_ids"].numpy(), attention_mask=batch["attention_mask"].numpy())
    out = {}
    for name, kwargs in CASES.items():
        seed_everything(0)
        plan = TrainPlan.from_loader_length(len(loader), 32, TrainConfig(lr=3e-2, max_steps=STEPS, seed=0))
        method = get_method(name)(**kwargs)
        model = method.attach(TinyBertClassifier(seed=0), SPEC, plan)
        fit(method, model, loader, plan, device="cpu", progress=False)
        method.after_training(model, loader)
        perturb_adapters(model)
        if name == "bayeslora":  # distinct kept ranks per module, one module pruned away entirely
            for i, layer in enumerate(lrvd_modules(model).values()):
                prune_layer(layer, torch.arange(i % (SPEC.r + 1)))
        model.eval()
        method.save_adapter(model, root / name)
        out[name] = (method, model, root / name)
    jobs = []
    for name, (_method, _model, path) in out.items():
        if name == "lora-ensemble":
            jobs += [
                {
                    "key": f"{name}/{m}",
                    "base": str(root / "base"),
                    "adapter": str(path / m),
                    "adapter_name": m,
                    "batch": str(root / "batch.npz"),
                }
                for m in ("member0", "member1")
            ]
        else:
            jobs.append(
                {"key": name, "base": str(root / "base"), "adapter": str(path), "batch": str(root / "batch.npz")}
            )
    (root / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(root / "jobs.json"), str(root / "logits.npz")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", "the fresh process must not import the suite"
    return out, dict(np.load(root / "logits.npz")), batch


def suite_logits(name, method, model, batch):
    """The suite's posterior-mean logits (no sampling anywhere)."""
    with torch.no_grad(), sampling(model, False):
        return model(batch).float()


def without_adapter(model, batch):
    """Logits with every adapter weight (trainable, not the head) zeroed: only the trained head left."""
    head = {id(p) for p in model.head_parameters()}
    saved = {}
    with torch.no_grad(), sampling(model, False):
        for p in model.parameters():
            if p.requires_grad and id(p) not in head:
                saved[p] = p.detach().clone()
                p.zero_()
        logits = model(batch).float()
        for p, value in saved.items():
            p.copy_(value)
    return logits


@pytest.mark.parametrize("name", [n for n in CASES if n != "lora-ensemble"])
def test_plain_peft_logits_equal_the_suite_posterior_mean(saved, name):
    out, logits, batch = saved
    method, model, path = out[name]
    expected = suite_logits(name, method, model, batch)
    got = torch.from_numpy(logits[name])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (expected - without_adapter(model, batch)).abs().max() > 1e-3, (
        "the adapter itself must matter (100x the tolerance)"
    )
    peft_type = str(logits[name + ":type"])
    assert peft_type == ("ADALORA" if name == "adalora" else "LORA")
    if name == "lora-temp-scaling":
        sidecar = json.loads((path / "lrvd_adapter.json").read_text())
        t = sidecar["extra"]["temperature"]
        assert t == method.temperature and t != 1.0
        torch.testing.assert_close(torch.softmax(got / t, -1), method.predict_proba(model, batch), rtol=1e-5, atol=1e-6)


def test_ensemble_members_are_named_peft_adapters(saved):
    out, logits, batch = saved
    method, model, _ = out["lora-ensemble"]
    with torch.no_grad():
        members = model.forward_members(batch)
    for k in range(2):
        torch.testing.assert_close(
            torch.from_numpy(logits[f"lora-ensemble/member{k}"]), members[k], rtol=1e-5, atol=1e-5
        )
    assert not torch.allclose(members[0], members[1], atol=1e-3)


def test_pruned_ranks_travel_as_rank_pattern_and_posterior_in_the_sidecar(saved):
    from safetensors.torch import load_file

    out, _, _ = saved
    method, model, path = out["bayeslora"]
    config = json.loads((path / "adapter_config.json").read_text())
    kept = {n: m.r for n, m in lrvd_modules(model.backbone).items() if m.r > 0}
    assert config["rank_pattern"] == kept and set(config["target_modules"]) == set(kept)
    posterior = load_file(str(path / "lrvd_posterior.safetensors"))
    sigma_keys = [k for k in posterior if k.endswith("rank_log_sigma2")]
    assert len(sigma_keys) == len(lrvd_modules(model)), "every module's log sigma^2 is in the sidecar"
    assert not any(k.endswith(("A_mu", "B_mu")) and posterior[k].numel() for k in posterior), (
        "means live in the peft file, not twice"
    )


@pytest.mark.parametrize("name, sigma_suffix", [("blob", "lora_A_std_sqrt"), ("adalora-ivon", None)])
def test_posterior_sidecar_of_blob_and_ivon(saved, name, sigma_suffix):
    from safetensors.torch import load_file

    out, _, _ = saved
    _, _, path = out[name]
    posterior = load_file(str(path / "lrvd_posterior.safetensors"))
    if sigma_suffix:
        assert any(k.endswith(sigma_suffix) for k in posterior)
    else:
        assert any(k.startswith("extra.ivon_std.") for k in posterior)


@pytest.mark.parametrize("name", list(CASES))
def test_reload_into_the_full_method_is_exact(saved, name):
    """lrvd loads the peft files + sidecar back into the full method (posterior included)."""
    out, _, batch = saved
    method, model, path = out[name]
    plan = TrainPlan.from_loader_length(4, 32, TrainConfig(lr=3e-2, max_steps=STEPS, seed=0))
    fresh_method = get_method(name)(**CASES[name])
    base = TinyBertClassifier(seed=0)  # the same pretrained model ...
    seed_everything(1)  # ... but other adapter initialisations: the load must restore every tensor
    fresh = fresh_method.attach(base, SPEC, plan)
    fresh_method.load_adapter(fresh, path)
    fresh.eval()
    torch.manual_seed(3)
    expected = method.predict_proba(model, batch)
    torch.manual_seed(3)
    got = fresh_method.predict_proba(fresh, batch)
    assert torch.equal(got, expected)
