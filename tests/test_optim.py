"MuonAdamW checkpoints on disk (nanochat's optim_%06d_rank%d.pt layout), resuming, and the benchmark CLI."
import torch
import torch.nn as nn
import torch.nn.functional as F
import pytest

from nanochat_nb.common import atomic_path
from nanochat_nb.cli import make_cli
from nanochat_nb.optim import MuonAdamW, muon_param_groups
from nanochat_nb.optim_bench import bench_optim


def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(64, 32), nn.Linear(32, 32, bias=False), nn.ReLU(),
                         nn.Linear(32, 128, bias=False), nn.ReLU(), nn.Linear(128, 32, bias=False), nn.ReLU(),
                         nn.Linear(32, 64, bias=False))


def _optimizer(model):
    mats = [model[1].weight, model[3].weight, model[5].weight]
    groups = [dict(kind="adamw", params=[model[0].weight], lr=0.05, betas=(0.8, 0.995), eps=1e-10, weight_decay=0.001),
              dict(kind="adamw", params=[model[7].weight], lr=0.01, betas=(0.8, 0.96), eps=1e-10, weight_decay=0.01),
              *muon_param_groups(mats, lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9, weight_decay=0.1)]
    for g in groups: g["initial_lr"] = g["lr"]
    return MuonAdamW(groups)


def _train(model, opt, first_step, steps):
    g = torch.Generator().manual_seed(first_step)
    for step in range(first_step, first_step + steps):
        for grp in opt.param_groups:   # schedules, as the training loop sets them
            grp["lr"] = grp["initial_lr"] * (1 - step / 40)
            if grp["kind"] == "muon": grp["momentum"], grp["weight_decay"] = 0.85 + 0.01 * step, 0.1 * (1 - step / 40)
        x = torch.randint(0, 64, (128,), generator=g)
        F.cross_entropy(model(x), (3 * x + 1) % 64).backward()
        opt.step(); model.zero_grad(set_to_none=True)


def test_checkpoint_files_resume_identically(tmp_path):
    model = _model(0)
    opt = _optimizer(model)
    _train(model, opt, 0, 6)
    for name, obj in [("model_000006.pt", model.state_dict()), ("optim_000006_rank0.pt", opt.state_dict())]:
        with atomic_path(tmp_path / name) as t: torch.save(obj, t)
    _train(model, opt, 6, 6)

    model2 = _model(1)
    opt2 = _optimizer(model2)
    model2.load_state_dict(torch.load(tmp_path / "model_000006.pt", weights_only=True))
    opt2.load_state_dict(torch.load(tmp_path / "optim_000006_rank0.pt", weights_only=True))
    _train(model2, opt2, 6, 6)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for k in s1["state"]:
        for key, v in s1["state"][k].items():
            assert (torch.equal(v, s2["state"][k][key]) if torch.is_tensor(v) else v == s2["state"][k][key])


def test_loading_a_mismatched_checkpoint_fails():
    opt = _optimizer(_model(0))
    sd = opt.state_dict()
    small = MuonAdamW([dict(kind="adamw", params=[nn.Parameter(torch.zeros(3))], lr=0.1)])
    with pytest.raises(ValueError, match="does not fit"):
        small.load_state_dict(sd)


def test_bench_cli_runs():
    t = make_cli(bench_optim).cli(["--n-embd", "64", "--n-layer", "2", "--vocab", "256", "--steps", "1", "--threads", "1",
                                   "--device-type", "cpu"])
    assert set(t) == {"per_matrix", "stacked", "adamw_plain", "adamw_fused", "full"} and all(v > 0 for v in t.values())


def test_beta2_one_is_accepted_like_nanochat():
    "beta2=1.0 keeps NorMuon's buffer at its first value (nanochat accepts it); above 1 is refused with the range."
    import pytest, torch
    from nanochat_nb.optim import MuonAdamW
    p = torch.nn.Parameter(torch.randn(16, 32))
    p.grad = torch.randn(16, 32) * 1e-4
    before = p.detach().clone()
    MuonAdamW([dict(kind="muon", params=[p], lr=0.02, beta2=1.0)]).step()
    assert torch.isfinite(p).all() and not torch.equal(p.detach(), before)
    with pytest.raises(ValueError, match=r"beta2=1.5; it must be in \[0, 1\]"):
        MuonAdamW([dict(kind="muon", params=[p], lr=0.02, beta2=1.5)])
