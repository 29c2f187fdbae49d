"""UNAS on the darts space: its estimators against exact gradients, the objective's terms by hand, per-sample
architectures, searches with every label source, exact resume, the latency surrogate, sep_conv_7x7 and refusals."""
from __future__ import annotations

import math

import pytest
import torch

from nas.data import ImageData
from nas.registry import ConfigError
from nas.search.differentiable import build_strategy
from nas.search.unas import UnasStrategy
from nas.search.unas_estimator import (Selection, fit_ridge, gap_objective, pack, rebar_objective,
                                       reinforce_objective, relaxed_sample, soften, unpack)
from nas.spaces import build_space
from nas.spaces import darts_genotype as dg
from nas.spaces.base import SampleMixture
from nas.tasks import build_task
from nas.train import TaskModel, Trainer, load_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
TINY = ["space.name=darts", "space.darts.supernet.cells=3", "space.darts.supernet.channels=4",
        "space.darts.network.cells=3", "space.darts.network.channels=4", "differentiable.method=unas",
        "differentiable.training.batch_size=4", "differentiable.training.epochs=1",
        "differentiable.training.max_batches_per_epoch=2", "differentiable.training.optimizer=adam",
        "differentiable.training.lr=3e-4", "differentiable.arch_lr=1e-2", "differentiable.unas.init_epochs=0"]


class Interrupted(Exception):
    """Raised after the first epoch's checkpoint, standing in for a job killed there."""


def _images(tiny_info, size: int = 32) -> ImageData:
    """40 random RGB images of 6 classes: 16 train, 8 valid, 16 search."""
    info = tiny_info(num_classes=6, channels=3, image_size=size, num_images=40, flip=True, crop_padding=4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 6, (40,), generator=generator)
    return ImageData(images, labels, info, {"train": torch.arange(16), "valid": torch.arange(16, 24),
                                            "search": torch.arange(24, 40)})


def _setup(cfg, data, *overrides: str, task_name: str = "cls"):
    config = cfg(*TINY, f"task.name={task_name}", *overrides)
    space = build_space(config["space"])
    task = build_task(config["task"], data.info, seed=0)
    dcfg = config["differentiable"]
    strategy = build_strategy(space, dcfg, dcfg["training"]["epochs"], CPU)
    torch.manual_seed(0)
    model = TaskModel(strategy.build_supernet(task.in_channels), task)
    return config, space, model, strategy


def _trainer(config, data, model, strategy, checkpoint, on_epoch=None) -> Trainer:
    return Trainer(model, data, config["differentiable"]["training"], CPU, checkpoint, identity={"t": 1}, seed=0,
                   progress=False, strategy=strategy, on_epoch=on_epoch)


# ---- the estimators --------------------------------------------------------------------------------------------
THETA = torch.tensor([0.3, -0.5, 1.0, 0.0], dtype=torch.float64)
VALUES = torch.tensor([1.0, 3.0, -2.0, 0.5], dtype=torch.float64)


def _toy_f(z: torch.Tensor) -> torch.Tensor:
    """Nonlinear in a relaxed sample (so the relaxation alone is biased); f(e_k) = v_k + v_k^2 / 4."""
    s = z @ VALUES
    return s + 0.25 * s ** 2


def _per_sample_gradients(kind: str, eps: float, samples: int) -> torch.Tensor:
    """Each sample's estimate of d E_q[f] / d theta: one leaf row of theta per sample, through ``Selection``."""
    theta = THETA.repeat(samples, 1).requires_grad_()
    logits = Selection([], soften(theta, eps).view(1, 1, 1, samples, 4))
    relaxed = logits.map(lambda a: relaxed_sample(a, 0.4, rebar=kind == "rebar"))
    discrete = relaxed.discrete()
    log_q = discrete.log_prob(logits)
    f_d, f_c = _toy_f(discrete.ops.view(samples, 4)), _toy_f(relaxed.ops.view(samples, 4))
    if kind == "reinforce":
        loss = reinforce_objective(log_q, f_d, baseline=1.0)
    else:  # "relaxed_only": REBAR's formula on a sample without the conditional correction
        loss = rebar_objective(log_q, f_d, f_c)
    (grad,) = torch.autograd.grad(loss * samples, theta)  # the objectives average over samples
    return grad


@pytest.mark.parametrize("kind, eps", [("rebar", 0.0), ("rebar", 0.08), ("reinforce", 0.0), ("reinforce", 0.08)])
def test_estimators_are_unbiased_on_a_toy_categorical(kind, eps):
    """Measured (100k samples, seed 0): every component within 2.5 standard errors of the exact gradient."""
    torch.manual_seed(0)
    one_hots = torch.eye(4, dtype=torch.float64)
    exact = torch.autograd.functional.jacobian(
        lambda t: (soften(t, eps).softmax(-1) * _toy_f(one_hots)).sum(), THETA)
    grads = _per_sample_gradients(kind, eps, 100_000)
    mean, stderr = grads.mean(0), grads.std(0) / math.sqrt(len(grads))
    assert torch.all((mean - exact).abs() < 4 * stderr), (mean, exact, stderr)


def test_the_toy_check_detects_a_biased_estimator():
    """Without REBAR's correction the relaxed term's gradient is not cancelled: measured 47 standard errors off."""
    torch.manual_seed(0)
    exact = torch.autograd.functional.jacobian(
        lambda t: (t.softmax(-1) * _toy_f(torch.eye(4, dtype=torch.float64))).sum(), THETA)
    grads = _per_sample_gradients("relaxed_only", 0.0, 100_000)
    mean, stderr = grads.mean(0), grads.std(0) / math.sqrt(len(grads))
    assert torch.any((mean - exact).abs() > 10 * stderr)


def test_rebar_sample_has_the_value_of_its_gumbel_softmax():
    torch.manual_seed(1)
    logits = torch.randn(6, 5)
    torch.manual_seed(2)
    corrected = relaxed_sample(logits, 0.4, rebar=True)
    torch.manual_seed(2)
    u = torch.rand(6, 5).clamp(1e-3, 1 - 1e-3)
    plain = torch.softmax((logits.log_softmax(-1) - torch.log(-torch.log(u))) / 0.4, dim=-1)
    assert torch.allclose(corrected, plain, atol=1e-6)


# ---- the objective's terms by hand --------------------------------------------------------------------------------
def _selection(first: list[float], second: list[float], op_first: list[float], op_second: list[float]) -> Selection:
    """Node 0 of the normal cell set as given (one sample); every other selector uniform."""
    inputs = [torch.full((2, 2, 1, i + 2), 1.0 / (i + 2)) for i in range(4)]
    ops = torch.full((2, 4, 2, 1, 3), 1.0 / 3)
    inputs[0][0, 0, 0], inputs[0][0, 1, 0] = torch.tensor(first), torch.tensor(second)
    ops[0, 0, 0, 0], ops[0, 0, 1, 0] = torch.tensor(op_first), torch.tensor(op_second)
    return Selection(inputs, ops)


def test_pair_penalty_by_hand():
    sel = _selection([0.5, 0.5], [1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0])
    # normal node 0: <input_op0, input_op1> = sum_jk (0.5 * op0_k)(in1_j * op1_k) = 0.5 * 1 * 0.5 = 0.25
    # every uniform node i (7 of them): sum_j (1/(i+2))^2 * sum_k (1/3)^2 = 1/(i+2) * 1/3
    uniform = sum(1.0 / (i + 2) / 3.0 for i in range(4))
    expected = 0.25 + (uniform - 1.0 / 2 / 3) + uniform
    assert sel.pair_overlap().shape == (1,)
    assert sel.pair_overlap().item() == pytest.approx(expected, rel=1e-6)
    # the same by the outer products themselves (``Alpha.alpha_loss``)
    outer = sum((torch.einsum("sbj,sbk->sbjk", inp[c], sel.ops[c, i])[0]
                 * torch.einsum("sbj,sbk->sbjk", inp[c], sel.ops[c, i])[1]).sum()
                for c in range(2) for i, inp in enumerate(sel.inputs))
    assert outer.item() == pytest.approx(expected, rel=1e-6)


def test_gap_term_by_hand_pairs_train_sample_i_with_search_sample_i(cfg, tiny_info):
    assert gap_objective(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0]), 0.5).tolist() == [1.25, 2.5]
    data = _images(tiny_info)
    _, _, _, strategy = _setup(cfg, data, "differentiable.unas.pair_penalty=0", "differentiable.unas.num_ops=3")
    # a stand-in model whose logits are its inputs: CE = -log p(target)
    model = lambda inputs, mixture: inputs.log()  # noqa: E731
    train = (torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 0]))
    search = (torch.tensor([[0.25, 0.75], [0.5, 0.5]]), torch.tensor([0, 0]))
    loss, _, parts = strategy.objective(model, strategy.draw(2)[0], train, search)
    ln2 = math.log(2.0)
    assert loss.tolist() == pytest.approx([ln2 + 0.5 * ln2, 2 * ln2 + 0.5 * ln2])
    assert parts["gap"].item() == pytest.approx(ln2)
    _, _, _, with_pairs = _setup(cfg, data, "differentiable.unas.gap_lambda=0", "differentiable.unas.num_ops=3")
    sel = with_pairs.draw(2)[0]
    loss, _, _ = with_pairs.objective(model, sel, train, search)
    assert torch.allclose(loss, torch.tensor([ln2, 2 * ln2]) + 0.2 * sel.pair_overlap())


# ---- per-sample architectures --------------------------------------------------------------------------------------
@pytest.mark.parametrize("same", [False, True])
def test_per_sample_and_same_minibatch_shapes(cfg, tiny_info, same):
    _, _, _, strategy = _setup(cfg, _images(tiny_info), f"differentiable.unas.same_alpha_minibatch={str(same).lower()}")
    relaxed, logits = strategy.draw(5)
    samples = 1 if same else 5
    weights = relaxed.edge_weights()
    assert weights.shape == (2, 14, samples, 7)
    assert relaxed.discrete().log_prob(logits).shape == (samples,)
    assert relaxed.features().shape == (samples, 4 * 14 * 7)
    # each node's two selectors each spread weight 1 over (input, op): 2 per node and sample
    per_node = torch.stack([weights[:, dg.EDGE_INPUTS.index((i, 0)):dg.EDGE_INPUTS.index((i, 0)) + i + 2].sum((1, 3))
                            for i in range(4)])
    assert torch.allclose(per_node, torch.full_like(per_node, 2.0))
    assert same or not torch.allclose(weights[..., 0, :], weights[..., 1, :])


def test_a_per_sample_mixture_runs_each_image_with_its_own_weights(cfg, tiny_info):
    data = _images(tiny_info, size=16)
    _, _, model, strategy = _setup(cfg, data)
    supernet = model.backbone.eval()  # BN on running statistics: images do not see each other
    x = data.images[:3].float() / 255
    weights = strategy.draw(3)[0].edge_weights().detach()
    with torch.no_grad():
        together = supernet(x, mixture=SampleMixture.build(weights, 0.0))
        alone = [supernet(x[i:i + 1], mixture=SampleMixture.build(weights[:, :, i:i + 1], 0.0)) for i in range(3)]
        # a batch twice the samples (a jigsaw's tiles): inputs 2i and 2i + 1 run sample i
        doubled = supernet(x.repeat_interleave(2, 0), mixture=SampleMixture.build(weights, 0.0))
        swapped = supernet(x, mixture=SampleMixture.build(weights.flip(2), 0.0))
    assert torch.allclose(together, torch.cat(alone), atol=1e-5)
    assert torch.allclose(doubled[0::2], together, atol=1e-5) and torch.allclose(doubled[1::2], together, atol=1e-5)
    assert not torch.allclose(swapped, together, atol=1e-3)
    # the eval mixture (every selector's argmax, weight 1) is the derived cell's path
    with torch.no_grad():
        strategy.op_alphas.normal_()
        for alphas in strategy.input_alphas:
            alphas.normal_()
        assert torch.allclose(supernet(x, mixture=strategy.eval_mixture()), supernet(x, arch=strategy.derive()),
                              atol=1e-5)


def test_mixedop_pruning_skips_ops_below_eps_for_every_sample():
    weights = torch.zeros(2, 14, 2, 3)
    weights[..., 0, 0], weights[..., 1, 0] = 0.04, 0.2   # op 0: one sample above 0.05 -> runs
    weights[..., :, 1] = 0.049                            # op 1: below for both -> skipped
    weights[..., :, 2] = 0.05                             # op 2: at eps -> runs (upstream skips w < 0.05)
    mixture = SampleMixture.build(weights, 0.05)
    assert mixture.active[0][0] == [True, False, True]


# ---- the supernet's ops and sep_conv_7x7 -----------------------------------------------------------------------
def test_unas_supernet_holds_unas_ops_and_the_default_one_is_unchanged(cfg, tiny_info):
    config, space, model, strategy = _setup(cfg, _images(tiny_info), "differentiable.unas.num_ops=5")
    edge = model.backbone.cells[0].edges[0]
    assert list(edge) == list(dg.UNAS_OPS[:5]) and isinstance(edge["max_pool_3x3"], torch.nn.MaxPool2d)
    default = space.build_supernet(3).cells[0].edges[0]
    assert list(default) == list(dg.OPS[1:]) and isinstance(default["max_pool_3x3"], torch.nn.Sequential)
    assert space.mixture_shape == (2, 14, 8) and len(dg.OPS) == 8
    with pytest.raises(ValueError, match="sep_conv_7x7"):
        space.build_supernet(3)(torch.zeros(1, 3, 16, 16), arch=dg.published()["UNAS_CIFAR100"])


def test_sep_conv_7x7_is_an_op_of_darts_architectures(cfg):
    space = build_space(cfg(*TINY)["space"])
    arch = dg.published()["UNAS_CIFAR100"]
    assert dg.CHOICES[0] == 9 and dg.GENOTYPE_OPS[8] == "sep_conv_7x7"
    # reduce node 0: inputs [0, 0], UNAS ops [6, 1] = sep_conv_7x7, sep_conv_3x3
    assert dg.pairs(arch, 1)[:2] == [(0, dg.OPS.index("sep_conv_3x3"), 0), (0, 8, 0)]
    assert "sep_conv_7x7~0" in space.to_str(arch) and space.from_str(space.to_str(arch)) == arch
    network = space.build_network(arch, 3)
    head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(network.out_channels, 10))
    from nas.spaces.cost import count_params
    assert space.cost(arch, 10).params == count_params(network) + count_params(head)
    assert network(torch.zeros(2, 3, 16, 16)).shape == (2, network.out_channels, 4, 4)
    unas_supernet = space.build_supernet(3, ops=dg.UNAS_OPS, pool_bn=False)
    vector = space.angle_vector(unas_supernet, head, arch)  # the angle reads sep_conv_7x7 and BN-less pooling
    assert vector is not None and torch.isfinite(vector).all()
    assert not space.is_trainable(arch)
    with pytest.raises(ValueError, match="sep_conv_7x7"):
        dg.to_edges(arch)
    with pytest.raises(ConfigError):
        space.mutate(arch, __import__("random").Random(0), 0.5, True, "all")


# ---- derive ------------------------------------------------------------------------------------------------------
def test_derive_takes_each_selector_s_argmax_and_the_trace_keeps_it(cfg, tiny_info):
    _, _, _, strategy = _setup(cfg, _images(tiny_info))
    with torch.no_grad():
        strategy.input_alphas[2][0, 0, 3] = 1.0   # normal node 2, first input selector: node 1 (input 3)
        strategy.op_alphas[0, 2, 0, 6] = 1.0      # its op: sep_conv_7x7
        strategy.input_alphas[0][1, 1, 1] = 1.0   # reduce node 0, second input selector: c_{k-1}
        strategy.op_alphas[1, 0, 1, 2] = 1.0      # its op: max_pool_3x3
    arch = strategy.derive()
    skip = dg.GENOTYPE_OPS.index("skip_connect")
    normal = [(skip, 0)] * 4 + [(8, 3), (skip, 0)] + [(skip, 0)] * 2
    reduce = [(skip, 0), (dg.GENOTYPE_OPS.index("max_pool_3x3"), 1)] + [(skip, 0)] * 6
    assert arch == dg.from_pairs(normal, reduce)
    strategy.epoch_metrics()
    assert strategy.derive_at(0) == arch
    assert torch.equal(pack(unpack(strategy.alpha_trace[0])), strategy.alpha_trace[0])


# ---- searches through the trainer ------------------------------------------------------------------------------
@pytest.mark.parametrize("task_name", ["cls", "rot", "col", "jig", "rand"])
def test_a_unas_search_runs_two_steps_with_every_label_source(cfg, tiny_info, tmp_path, task_name):
    data = _images(tiny_info, size=16 if task_name == "jig" else 8)
    estimator = "reinforce" if task_name in ("col", "rand") else "rebar"
    config, space, model, strategy = _setup(cfg, data, f"differentiable.unas.estimator={estimator}",
                                            task_name=task_name)
    before = [p.detach().clone() for p in strategy.parameters()]
    history = _trainer(config, data, model, strategy, tmp_path / "c.pt").fit()
    record = history[0]
    assert len(history) == 1 and strategy.steps == 2
    assert all(math.isfinite(record[k]) for k in ("train_loss", "search_loss", "eval_loss", "gap", "pair_overlap"))
    assert any(not torch.equal(b, p) for b, p in zip(before, strategy.parameters()))
    assert space.to_str(strategy.derive()) and strategy.derive_at(0) == strategy.derive()


def test_init_epochs_train_only_the_weights(cfg, tiny_info, tmp_path):
    data = _images(tiny_info, size=8)
    config, _, model, strategy = _setup(cfg, data, "differentiable.unas.init_epochs=1",
                                        "differentiable.training.epochs=2", "differentiable.unas.num_ops=3")
    cut = []
    history = _trainer(config, data, model, strategy, tmp_path / "c.pt",
                       on_epoch=lambda r: cut.append([p.detach().clone() for p in strategy.parameters()])).fit()
    assert all(torch.count_nonzero(p) == 0 for p in cut[0]) and math.isnan(history[0]["search_loss"])
    assert any(torch.count_nonzero(p) for p in cut[1]) and strategy.steps == 2
    # the architecture LR: cosine over the one joint epoch, at (e + 1) / epochs as upstream's scheduler
    assert history[1]["arch_lr"] == pytest.approx(config["differentiable"]["unas"]["arch_lr_min"])


@pytest.mark.parametrize("estimator", ["rebar", "reinforce"])
def test_a_killed_search_resumes_to_the_same_alphas_bit_for_bit(cfg, tiny_info, tmp_path, estimator):
    data = _images(tiny_info, size=8)
    args = (f"differentiable.unas.estimator={estimator}", "differentiable.training.epochs=2",
            "differentiable.training.max_batches_per_epoch=1", "differentiable.unas.num_ops=3")
    config, _, model, strategy = _setup(cfg, data, *args)
    whole = _trainer(config, data, model, strategy, tmp_path / "whole.pt")
    history = whole.fit()

    def stop(record):
        raise Interrupted

    config, _, model, strategy = _setup(cfg, data, *args)
    with pytest.raises(Interrupted):
        _trainer(config, data, model, strategy, tmp_path / "cut.pt", on_epoch=stop).fit()
    config, _, model, strategy = _setup(cfg, data, *args)
    resumed = _trainer(config, data, model, strategy, tmp_path / "cut.pt")
    assert resumed.resume(load_checkpoint(tmp_path / "cut.pt", {"t": 1}))
    assert resumed.fit() == history
    a, b = whole.strategy.state_dict(), resumed.strategy.state_dict()
    assert all(torch.equal(x, y) for x, y in zip(a["alphas"], b["alphas"]))
    assert all(torch.equal(x, y) for x, y in zip(a["alpha_trace"], b["alpha_trace"]))
    assert a["baseline"] == b["baseline"] and a["steps"] == b["steps"] == 2
    assert str(a["optimizer"]) == str(b["optimizer"])


# ---- latency ------------------------------------------------------------------------------------------------------
def test_ridge_surrogate_recovers_a_linear_latency(cfg, tiny_info, capsys):
    _, _, _, strategy = _setup(cfg, _images(tiny_info), "differentiable.unas.num_ops=2")
    torch.manual_seed(0)
    with torch.no_grad():
        draws = [strategy.draw(1)[0].discrete() for _ in range(400)]
    features = torch.cat([d.features() for d in draws])
    truth = torch.randn(features.shape[1]).abs()
    latency = features @ truth + 3.0 + 0.1 * torch.randn(len(features))
    weights, stats = fit_ridge(features, latency)
    with capsys.disabled():
        print(f"\nridge on a linear latency (400 archs, 112 features): {stats}")
    assert stats["test_r2"] > 0.9 and weights.shape == (features.shape[1] + 1,)


def test_latency_term_times_archs_and_fits_the_surrogate(cfg, tiny_info, capsys):
    data = _images(tiny_info, size=16)
    config, _, model, strategy = _setup(
        cfg, data, "differentiable.unas.target_latency=0.01", "differentiable.unas.latency_archs=10",
        "differentiable.unas.latency_repeats=1", "differentiable.unas.latency_batch=2",
        "differentiable.unas.latency_ramp_steps=1", "differentiable.unas.gap_lambda=0")
    batch = (data.images[:4].float() / 255, data.labels[:4])
    strategy.start_epoch(0)
    strategy.steps = 1  # c_t at its full weight
    strategy.arch_step(model, batch, batch, None)
    stats = strategy.surrogate_stats
    with capsys.disabled():
        print(f"\nlatency surrogate, 10 timed archs on the CPU: {stats}")
    assert strategy.surrogate.shape == (4 * 14 * 7 + 1,) and math.isfinite(stats["train_mae"])
    assert math.isfinite(strategy.epoch_metrics()["latency_ms"])
    assert strategy.state_dict()["surrogate"] is not None


# ---- refusals ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, names", [
    ("differentiable.unas.estimator=relax", ["'relax'", "rebar, reinforce"]),
    ("differentiable.step_order=weights_first", ["'weights_first'", "arch_first"]),
    ("differentiable.unas.init_epochs=1", ["init_epochs", "0..0"]),
    ("differentiable.derive=top2", ["'top2'", "null"]),
    ("differentiable.unas.target_latency=5", ["latency_batch", "24", "batch of 4"]),
])
def test_bad_unas_searches_are_refused(cfg, override, names):
    config = cfg(*TINY, override)
    space = build_space(config["space"])
    for make in (build_strategy, UnasStrategy):
        with pytest.raises(ConfigError) as err:
            make(space, config["differentiable"], 1, CPU)
        assert all(name in str(err.value) for name in names), str(err.value)
