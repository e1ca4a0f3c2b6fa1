"""The multi-model trainer: each model as if trained alone."""

import pytest
import torch

from fedistill.augment import DSA, default_strategy
from fedistill.data import DIGITS_INFO
from fedistill.distill._fast_convnet import single_threaded
from fedistill.evaluate import EvalConfig, accuracy, evaluate_arrays
from fedistill.models import build_model
from fedistill.trainer import map_models, train_classifier, train_many

CFG = EvalConfig(epochs=6, batch_size=64)  # 100 images: two batches per epoch, lr drop at 3
SEEDS = (0, 7, 3)


def _set(digits_train):
    idx = torch.cat([torch.nonzero(digits_train.labels == c)[:10, 0] for c in range(10)])
    return digits_train.images[idx], digits_train.labels[idx]


def _fresh(seed, info=DIGITS_INFO, **kwargs):
    """A ConvNet (width 32 unless ``kwargs`` say) initialised under ``seed``, and its generator."""
    torch.manual_seed(seed)
    model = build_model("convnet", info, **({"width": 32} | kwargs))
    return model, torch.Generator().manual_seed(seed)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _each_as_trained_alone(fresh, seeds, x, y, cfg, augment, *, workers=None, chunk=None):
    """The models ``fresh(seed)`` gives, trained together by ``train_many``; asserts each is,
    bit for bit, the same model trained alone on one thread (as a worker runs it)."""
    pairs = [fresh(s) for s in seeds]
    together = train_many(
        [m for m, _ in pairs],
        x,
        y,
        cfg,
        [g for _, g in pairs],
        augment=augment,
        workers=workers,
        chunk=chunk,
    )
    for seed, model in zip(seeds, together, strict=True):
        alone, gen = fresh(seed)
        with single_threaded():
            train_classifier(alone, x, y, cfg, augment=augment, generator=gen, chunk=chunk)
        assert torch.equal(_params(alone), _params(model))
    return together


def test_many_models_at_once_equal_each_trained_alone(digits_train, digits_test):
    x, y = _set(digits_train)
    augment = DSA(default_strategy(DIGITS_INFO))
    together = _each_as_trained_alone(_fresh, SEEDS, x, y, CFG, augment, workers=2)
    # the first alone on the caller's two threads: the same up to float rounding
    m2, g2 = _fresh(SEEDS[0])
    train_classifier(m2, x, y, CFG, augment=augment, generator=g2)
    a, b = _params(m2), _params(together[0])
    assert float((a - b).abs().max()) < 1e-4 * float(a.abs().max())
    assert accuracy(m2, digits_test) == accuracy(together[0], digits_test)
    # the models really differ (own init, order and augmentation)
    assert not torch.allclose(_params(together[0]), _params(together[1]))
    assert torch.get_num_threads() == 2  # the caller's setting is restored


def test_result_does_not_depend_on_the_number_of_workers(digits_train):
    x, y = _set(digits_train)
    runs = []
    for workers in (2, 3):
        fresh = [_fresh(s) for s in SEEDS]
        models = train_many(
            [m for m, _ in fresh], x, y, CFG, [g for _, g in fresh], workers=workers
        )
        runs.append([_params(m) for m in models])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_evaluate_arrays_same_accuracies_in_turn_and_at_once(digits_train, digits_test):
    x, y = _set(digits_train)
    cfg = dict(epochs=4, num_models=3, batch_size=64, model_kwargs={"width": 16})
    turn = evaluate_arrays(x, y, DIGITS_INFO, digits_test, EvalConfig(**cfg, workers=1), seed=2)
    once = evaluate_arrays(x, y, DIGITS_INFO, digits_test, EvalConfig(**cfg), seed=2)
    assert once.accuracies == pytest.approx(turn.accuracies, abs=2 / len(digits_test))
    assert once.config["workers"] is None and turn.config["workers"] == 1
    alone = evaluate_arrays(
        x, y, DIGITS_INFO, digits_test, EvalConfig(**cfg | {"num_models": 1}), seed=2
    )
    assert alone.accuracies == once.accuracies[:1]  # one model alone: the same floats


def test_map_models_keeps_order_and_propagates_errors():
    assert map_models(lambda i: i * i, range(5), workers=2) == [0, 1, 4, 9, 16]

    def boom(i):
        raise RuntimeError(f"model {i}")

    with pytest.raises(RuntimeError, match="model 0"):
        map_models(boom, range(3), workers=2)
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="generators"):
        train_many([torch.nn.Linear(1, 1)], torch.zeros(1, 1), torch.zeros(1), CFG, [])


def test_map_models_gives_the_remainder_the_idle_threads():
    assert torch.get_num_threads() == 2
    pairs = map_models(lambda i, k: (i, k), range(5), helpers=True)
    assert pairs == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 2)]  # the fifth: both threads
    assert map_models(lambda i, k: (i, k), range(1), helpers=True) == [(0, 2)]
    assert map_models(lambda i, k: (i, k), range(4), helpers=True) == [(i, 1) for i in range(4)]
    # explicit workers: as asked, one thread each
    assert map_models(lambda i, k: k, range(3), workers=2, helpers=True) == [1, 1, 1]
    assert torch.get_num_threads() == 2


def _mnist_like(seed=0):
    torch.manual_seed(seed)
    return torch.randn(40, 1, 28, 28), torch.arange(40) % 10


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_chunks_on_several_threads_give_the_same_floats(precision):
    from fedistill.data import MNIST_INFO

    x, y = _mnist_like()
    cfg = EvalConfig(epochs=3, batch_size=32)  # batches of 32 and 8; chunks of 7 cut both
    runs = []
    for chunk_workers in (1, 3):
        model, gen = _fresh(1, MNIST_INFO, width=16, geometry="reference")
        with single_threaded():
            train_classifier(
                model, x, y, cfg, generator=gen, chunk=7, precision=precision,
                chunk_workers=chunk_workers,
            )  # fmt: skip
        runs.append(_params(model))
    assert torch.equal(runs[0], runs[1])
    assert torch.get_num_threads() == 2


def test_a_lone_or_last_model_trains_as_it_would_alone():
    from fedistill.data import MNIST_INFO

    x, y = _mnist_like()
    cfg = EvalConfig(epochs=2, batch_size=32)
    augment = DSA(default_strategy(MNIST_INFO))

    def fresh(seed):
        return _fresh(seed, MNIST_INFO, width=16, geometry="reference")

    for seeds in ((0, 1, 2), (5,)):  # the third of three, and a lone model, spread their chunks
        _each_as_trained_alone(fresh, seeds, x, y, cfg, augment, chunk=7)


def test_chunked_batches_give_the_same_training_up_to_rounding():
    from fedistill.data import MNIST_INFO
    from fedistill.trainer import auto_chunk

    torch.manual_seed(0)
    x, y = torch.randn(40, 1, 28, 28), torch.arange(40) % 10
    cfg = EvalConfig(epochs=3, batch_size=32)  # batches of 32 and 8; chunks of 7 cut both
    runs = {}
    for norm in ("instance", "batch"):
        for chunk in (None, 7):
            torch.manual_seed(1)
            model = build_model("convnet", MNIST_INFO, width=16, norm=norm, geometry="reference")
            gen = torch.Generator().manual_seed(1)
            with single_threaded():  # two threads under load: slow, and beside the point
                train_classifier(model, x, y, cfg, generator=gen, chunk=chunk)
            runs[norm, chunk] = _params(model)
    a, b = runs["instance", None], runs["instance", 7]
    assert not torch.equal(a, b) and float((a - b).abs().max()) < 1e-5 * float(a.abs().max())
    assert torch.equal(runs["batch", None], runs["batch", 7])  # batch norm: chunking refused
    mnist = build_model("convnet", MNIST_INFO, geometry="reference")
    assert auto_chunk(mnist) == 10  # 5 MiB of 128 × 32 × 32 float maps
    assert auto_chunk(build_model("convnet", MNIST_INFO, norm="batch")) is None
    assert auto_chunk(build_model("mlp", MNIST_INFO)) is None


def test_bf16_is_opt_in_and_still_learns(digits_train, digits_test):
    from fedistill.errors import ConfigError

    x, y = digits_train.images, digits_train.labels
    cfg = dict(epochs=10, num_models=2, batch_size=32, model_kwargs={"width": 32}, dsa=False)
    fp32 = evaluate_arrays(x, y, DIGITS_INFO, digits_test, EvalConfig(**cfg), seed=1)
    bf16 = evaluate_arrays(
        x, y, DIGITS_INFO, digits_test, EvalConfig(**cfg, precision="bf16"), seed=1
    )
    assert bf16.config["precision"] == "bf16" and fp32.config["precision"] == "fp32"
    assert fp32.mean > 0.8 and bf16.mean > 0.8 and abs(bf16.mean - fp32.mean) < 0.05
    with pytest.raises(ConfigError, match="precision"):
        EvalConfig(precision="fp8").validate()
    with pytest.raises(ValueError, match="precision"):
        train_classifier(torch.nn.Linear(1, 1), x, y, CFG, precision="fp16")
