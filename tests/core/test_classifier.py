"""The ClassifierModel contract: which parameters are the task head, also on a deep copy."""

from __future__ import annotations

import copy

import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, TrainConfig, TrainPlan, get_method


def test_deepcopy_keeps_the_head_pointing_at_the_copys_own_parameters():
    model = TinyBertClassifier(seed=0)
    head = list(model.head_parameters())
    assert head
    clone = copy.deepcopy(model)
    clone_head = list(clone.head_parameters())
    assert [p.shape for p in clone_head] == [p.shape for p in head]
    own = {id(p) for p in clone.parameters()}
    assert all(id(p) in own for p in clone_head)
    assert not {id(p) for p in clone_head} & {id(p) for p in head}
    assert all(clone.is_head_parameter(p) for p in clone_head)


def test_a_method_attached_to_a_copy_trains_the_copys_head():
    plan = TrainPlan(total_steps=2, n_train=16, train=TrainConfig(lr=1e-2, max_steps=2))
    method = get_method("lora")()
    model = method.attach(copy.deepcopy(TinyBertClassifier(seed=0)), AdapterConfig(r=2, alpha=4), plan)
    opt, _ = method.configure_optimizers(model, plan)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    head = list(model.head_parameters())
    assert head and all(p.requires_grad and id(p) in in_opt for p in head)
    before = [p.detach().clone() for p in head]
    batch = next(iter(make_toy_loader(16, batch_size=8)))
    torch.nn.functional.cross_entropy(model(batch), batch["labels"]).backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, head))
