"""Differentiable searches in the one trainer: DARTS's second-order gradient, GDAS's sampling, exact resume, every
method with every label source on nb201 and darts, and the refusals before training."""
from __future__ import annotations

import math

import pytest
import torch

from jobs import nas, write_config
from nas.registry import ConfigError
from nas.search.differentiable import build_strategy
from nas.spaces import build_space
from nas.spaces.base import HardMixture
from nas.tasks import build_task
from nas.train import TaskModel, Trainer, load_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
SPACES = {
    "nb201": ["space.name=nb201", "space.channels=4", "space.cells_per_stage=1"],
    "darts": ["space.name=darts", "space.darts.supernet.cells=3", "space.darts.supernet.channels=4"],
}


class Interrupted(Exception):
    """Raised after the first epoch's checkpoint, standing in for a job killed there."""


def _setup(cfg, data, space_name: str, task_name: str, method: str, *overrides: str):
    config = cfg(*SPACES[space_name], f"task.name={task_name}", f"differentiable.method={method}",
                 "differentiable.training.batch_size=16", "differentiable.training.epochs=2",
                 "differentiable.training.lr=0.05", *overrides)
    space = build_space(config["space"])
    task = build_task(config["task"], data.info, seed=0)
    torch.manual_seed(0)
    model = TaskModel(space.build_supernet(task.in_channels), task)
    dcfg = config["differentiable"]
    strategy = build_strategy(space, dcfg, dcfg["training"]["epochs"], CPU)
    return config, space, model, strategy


def _trainer(config, data, model, strategy, checkpoint, on_epoch=None) -> Trainer:
    return Trainer(model, data, config["differentiable"]["training"], CPU, checkpoint, identity={"t": 1}, seed=0,
                   progress=False, strategy=strategy, on_epoch=on_epoch)


def test_darts_second_order_gradient_matches_finite_differences(cfg, random_images, monkeypatch):
    """d/dalpha L_val(w - xi (dL_train/dw + wd w), alpha), by central differences in float64, against the
    unrolled step's gradient (whose Hessian-vector product is itself a finite difference, R = 0.01 / ||v||).

    The network's ReLUs become softplus here: a ReLU network's weight gradient jumps wherever an activation
    crosses zero, so the unrolled loss is only piecewise smooth in alpha and central differences would straddle
    the jumps (measured: 13.4 against -0.029 at eps 1e-5 with ReLU)."""
    smooth = lambda x, *args, **kwargs: torch.nn.functional.softplus(x, beta=5.0)  # noqa: E731
    monkeypatch.setattr(torch, "relu", smooth)
    monkeypatch.setattr(torch.nn.ReLU, "forward", lambda self, x: smooth(x))
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        data = random_images()
        config, space, model, strategy = _setup(cfg, data, "nb201", "cls", "darts_v2")
        model.double()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(0)
        images, labels, ids = data.images[:8].double() / 255, data.labels[:8], torch.arange(8)
        train = model.task.prepare(images, labels, ids, train=False, generator=generator)
        search = model.task.prepare(data.images[8:16].double() / 255, data.labels[8:16], ids, train=False,
                                    generator=generator)
        with torch.no_grad():
            strategy.alphas.normal_(0, 0.5)
        grad, _, _ = strategy.arch_gradient(model, train, search, optimizer)

        weights = [p for p in model.parameters()]

        def unrolled_val_loss(alphas: torch.Tensor) -> float:
            mixture = torch.softmax(alphas, dim=-1)
            loss = model.task.loss(model(train[0], mixture=mixture), train[1])
            grads = torch.autograd.grad(loss, weights)
            saved = [w.detach().clone() for w in weights]
            with torch.no_grad():
                for w, g in zip(weights, grads):
                    w.sub_(0.1 * (g + 5e-4 * w))
                value = float(model.task.loss(model(search[0], mixture=mixture), search[1]))
                for w, s in zip(weights, saved):
                    w.copy_(s)
            return value

        alphas = strategy.alphas.detach().clone()
        numeric = torch.zeros_like(alphas)
        eps = 1e-5
        for index in range(alphas.numel()):
            step = torch.zeros_like(alphas).view(-1)
            step[index] = eps
            numeric.view(-1)[index] = (unrolled_val_loss(alphas + step.view_as(alphas))
                                       - unrolled_val_loss(alphas - step.view_as(alphas))) / (2 * eps)
        error = float((grad - numeric).norm() / numeric.norm())
        # the second-order term matters here: the first-order gradient alone is further off
        first, _, _ = type(strategy).__mro__[1].arch_gradient(strategy, model, train, search, optimizer)
        first_error = float((first - numeric).norm() / numeric.norm())
        # measured: 0.0009 relative error, against 0.82 for the first-order gradient
        assert error < 0.01 and first_error > 10 * error, (error, first_error)
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("grad_all", [True, False])
def test_gdas_runs_one_op_per_edge_and_reaches_every_alpha(cfg, random_images, grad_all):
    data = random_images()
    config, space, model, strategy = _setup(cfg, data, "nb201", "cls", "gdas",
                                            f"differentiable.gdas_grad_all={str(grad_all).lower()}")
    strategy.start_epoch(0)
    calls: dict[tuple[int, int], int] = {}
    for cell_index, cell in enumerate(c for c in model.backbone.layers if hasattr(c, "edges")):
        for pos, edge in enumerate(cell.edges):
            for name, op in edge.items():
                # a ReLU-conv-BN op may run as its conv and BN (nb201 shares the ReLU of a node): watch its conv
                watched = op[1] if isinstance(op, torch.nn.Sequential) else op
                watched.register_forward_pre_hook(
                    lambda *_a, key=(cell_index, pos): calls.__setitem__(key, calls.get(key, 0) + 1))
    mixture = strategy.mixture()
    assert isinstance(mixture, HardMixture)
    outputs = model(data.images[:16].float() / 255, mixture=mixture)
    chosen = mixture.chosen
    for (cell_index, pos), count in calls.items():
        assert count == 1 and space.mixture_ops[chosen[pos]] != "none"  # only the chosen op ran
    assert all(calls.get((c, pos)) for c in range(3) for pos in range(6) if space.mixture_ops[chosen[pos]] != "none")
    model.task.loss(outputs, data.labels[:16]).backward()
    if grad_all:
        assert torch.all(strategy.alphas.grad != 0)  # the zero-valued terms carry a gradient to every alpha
    # at the sampled weights: an unchosen op's weight gets a gradient exactly with the zero-valued terms
    weights = mixture.weights.detach().clone().requires_grad_()
    hard = HardMixture(weights, mixture.chosen, grad_all)
    model.task.loss(model(data.images[:16].float() / 255, mixture=hard), data.labels[:16]).backward()
    unchosen = torch.ones_like(weights, dtype=torch.bool)
    unchosen[torch.arange(len(chosen)), torch.tensor(chosen)] = False
    assert torch.all((weights.grad[unchosen] != 0) == grad_all)


@pytest.mark.parametrize("method", ["darts_v1", "darts_v2", "gdas"])
def test_a_killed_search_resumes_to_the_same_alphas_bit_for_bit(cfg, random_images, tmp_path, method):
    data = random_images()
    config, _, model, strategy = _setup(cfg, data, "nb201", "rot", method)
    whole = _trainer(config, data, model, strategy, tmp_path / "whole.pt")
    history = whole.fit()

    def stop_after_first_epoch(record):
        raise Interrupted

    config, _, model, strategy = _setup(cfg, data, "nb201", "rot", method)
    with pytest.raises(Interrupted):
        _trainer(config, data, model, strategy, tmp_path / "cut.pt", on_epoch=stop_after_first_epoch).fit()
    config, _, model, strategy = _setup(cfg, data, "nb201", "rot", method)
    resumed = _trainer(config, data, model, strategy, tmp_path / "cut.pt")
    assert resumed.resume(load_checkpoint(tmp_path / "cut.pt", {"t": 1}))
    assert resumed.fit() == history
    assert torch.equal(resumed.strategy.alphas, whole.strategy.alphas)
    assert all(torch.equal(a, b) for a, b in zip(resumed.strategy.alpha_trace, whole.strategy.alpha_trace))
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


@pytest.mark.parametrize("space_name", ["nb201", "darts"])
@pytest.mark.parametrize("method", ["darts_v1", "darts_v2", "gdas"])
@pytest.mark.parametrize("task_name", ["cls", "rot", "col", "jig", "rand"])
def test_every_method_with_every_label_source_runs_two_steps(cfg, random_images, tmp_path, space_name, method,
                                                             task_name):
    data = random_images()
    config, space, model, strategy = _setup(cfg, data, space_name, task_name, method,
                                            "differentiable.training.epochs=1", "differentiable.training.batch_size=8",
                                            "differentiable.training.max_batches_per_epoch=2")
    before = strategy.alphas.detach().clone()
    history = _trainer(config, data, model, strategy, tmp_path / "c.pt").fit()
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"]) and math.isfinite(history[0]["search_loss"])
    assert not torch.equal(before, strategy.alphas.detach())
    assert space.to_str(strategy.derive())  # a cell of the space


@pytest.mark.parametrize("override, names", [
    (["differentiable.method=enas"], ["differentiable.method", "'enas'", "darts_v1", "gdas"]),
    (["space.name=nb101"], ["cannot search space 'nb101'", "nb201, darts"]),
    (["differentiable.method=unas"], ["'unas' cannot search space 'nb201'", "darts"]),
    (["differentiable.tau_max=1", "differentiable.tau_min=2"], ["tau_min 2", "tau_max 1", "rise"]),
    (["space.name=darts", "differentiable.method=unas", "differentiable.unas.estimator=relax"], ["'relax'", "rebar"]),
    (["dataset.splits={train: 0.8, valid: 0.2, search: 0.0}"], ["search split", "fewer than one batch"]),
    (["differentiable.derive=top2"], ["'top2'", "argmax"]),
])
def test_bad_differentiable_searches_are_refused_before_training(tmp_path, override, names):
    result = nas("search-differentiable", "--config", str(write_config(tmp_path)), *override,
                 "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for name in names:
        assert name in result.stderr, (name, result.stderr)
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_refusals_name_the_space_in_process(cfg):
    config = cfg("space.name=nb101")
    with pytest.raises(ConfigError, match="nb101"):
        build_strategy(build_space(config["space"]), config["differentiable"], 1, CPU)
