"""Your own model and data: entry points, the pretrained fine-tune scenario, torchvision ResNets,
split-cifar10, and the two fine-tuning knobs (lr_decay, early_stop_patience)."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import sweep.train.evaluation as evaluation_mod
from sweep.commands.pretrain import pretrain
from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.data.entry_points import add_import_paths, import_paths
from sweep.data.tasks import Benchmark, Split, Task
from sweep.errors import ConfigError, DataError, SweepError
from sweep.models import Wrapped, build_model, load_weights, named_layers, save_weights, unwrap
from sweep.strategies.registry import build_strategy
from sweep.train.task_setup import layer_groups
from sweep.train.trainer import evaluate, load_benchmark, run_config, train_sequence
from sweep.tune.prefix_cache import prefix_key
from tests.helpers import REPO, run_cli

TASKS = "examples.my_tasks:build"
MODEL = "examples.my_models:build"


@pytest.fixture(scope="module")
def example() -> Benchmark:
    return build_benchmark(TASKS, "domain")


def write_module(folder: Path, name: str, body: str) -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return name


# --- entry points ------------------------------------------------------------------------------


def test_example_tasks_become_a_benchmark(example: Benchmark):
    assert example.name == TASKS and example.num_tasks == 2 and example.num_classes == 10
    assert example.input_shape == (1, 8, 8) and example.scenario == "domain"
    for task in example.tasks:
        assert task.classes == tuple(range(10))
        for split in (task.train, task.val, task.test):
            assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64 and len(split) > 0
    # validation carved from train with a fixed seed: the same tasks every time, disjoint splits
    again = build_benchmark(TASKS, "domain")
    assert torch.equal(again.tasks[1].val.x, example.tasks[1].val.x)
    train_rows = {row.tobytes() for row in example.tasks[0].train.x.numpy()}
    assert not any(row.tobytes() in train_rows for row in example.tasks[0].val.x.numpy())
    assert "data_sha256" in example.info


def test_example_model_lists_its_blocks(example: Benchmark):
    model = build_model(MODEL, example.input_shape, example.num_classes)
    assert isinstance(model, Wrapped) and [name for name, _ in named_layers(model)] == ["block1", "block2", "head"]
    assert model(torch.zeros(3, *example.input_shape)).shape == (3, 10)


def test_example_runs_in_the_trainer_and_forgets(example: Benchmark):
    result = run_config(TrainConfig(benchmark=TASKS, model=MODEL, scenario="domain", epochs=3), example)
    assert result.status == "finished"
    assert result.test[0, 0] > 0.6 and result.test[1, 1] > 0.5  # both tasks learned
    assert result.test[1, 0] < result.test[0, 0] - 0.1  # the rotated digits cost the upright ones


@pytest.mark.ray
@pytest.mark.slow
def test_example_entry_points_sweep_end_to_end(ray_session, tmp_path: Path, example: Benchmark):
    """The example module and model, a checkpoint for task 1, two trials searching both new knobs."""
    from sweep.tune.driver import SweepOptions, run_sweep

    config = TrainConfig(benchmark=TASKS, model=MODEL, scenario="domain", epochs=2)
    model, _, _, source_test = pretrain(config, example)
    checkpoint = save_weights(model, tmp_path / "source.pt")
    space = tmp_path / "ewc.yaml"
    space.write_text("strategy: ewc\nfixed: {batch_size: 64}\nparams:\n"
                     "  ewc_lambda: {type: float, low: 1.0, high: 1.0e+4, log: true}\n"
                     "  lr_decay: {type: float, low: 0.1, high: 1.0}\n"
                     "  early_stop_patience: {type: int, low: 0, high: 2}\n")
    summary = run_sweep(SweepOptions(strategy="ewc", space_file=str(space), benchmark=TASKS, model=MODEL,
                                     scenario="domain", pretrained=str(checkpoint), trials=2, seeds=1, epochs=2,
                                     results_dir=str(tmp_path), study="mine", quiet=True))
    assert summary.complete and summary.counts["finished"] == 4, summary.counts
    df = pq.read_table(tmp_path / "mine" / "trials.parquet").to_pandas()
    assert set(df.benchmark) == {TASKS} and set(df.model) == {MODEL}
    search = df[df.role == "search"]
    assert search.hp_lr_decay.between(0.1, 1.0).all() and search.hp_early_stop_patience.between(0, 2).all()
    accuracy = pq.read_table(tmp_path / "mine" / "accuracy.parquet").to_pandas()
    # every trial starts from the checkpoint: the source accuracy after task 1 is the checkpoint's
    after_source = accuracy[(accuracy.split == "test") & (accuracy.after_task == 1) & (accuracy.eval_task == 1)]
    assert len(after_source) == 4 and np.allclose(after_source.accuracy, source_test, rtol=0, atol=1e-12)


def test_import_paths_make_a_module_importable_in_another_process(tmp_path: Path, monkeypatch):
    """What a Ray trial does with setup["import_paths"]: the driver's folder of the module."""
    import subprocess
    import sys

    name = write_module(tmp_path, "far_away_models", """
        from torch import nn
        def build(num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    paths = import_paths(f"{name}:build", TASKS)
    assert paths == [str(tmp_path.resolve()), str(REPO)]
    probe = (f"import sys; from sweep.data.entry_points import add_import_paths, load_function\n"
             f"add_import_paths({paths!r})\nprint(load_function('{name}:build', 'model')(10))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0 and "Linear(in_features=64" in out.stdout, out.stderr
    add_import_paths(paths)  # idempotent
    assert sys.path.count(str(tmp_path.resolve())) <= 2


BAD_TASKS = {
    "no function": ("def other():\n    return []\n", "has no function 'build'"),
    "returns an int": ("def build():\n    return 42\n", "returned int"),
    "one task": ("import torch\ndef build():\n    s = (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))\n"
                 "    return [{'train': s, 'test': s}]\n", "at least 2"),
    "no test split": ("import torch\ndef build():\n    s = (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))\n"
                      "    return [{'train': s}, {'train': s}]\n", "no 'test' split"),
    "float labels": ("import torch\ndef build():\n    s = (torch.zeros(4, 2), torch.zeros(4))\n"
                     "    return [{'train': s, 'test': s}] * 2\n", "integer class ids"),
    "unknown key": ("import torch\ndef build():\n    s = (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))\n"
                    "    return [{'train': s, 'test': s, 'vall': s}] * 2\n", "unknown key 'vall'"),
    "raises": ("def build():\n    raise FileNotFoundError('no /data/mine')\n", "raised FileNotFoundError"),
    "import error": ("import no_such_dependency_xyz\ndef build():\n    return []\n", "importing"),
}


@pytest.mark.parametrize("case", list(BAD_TASKS))
def test_bad_benchmark_entry_points_are_one_line_errors(case: str, tmp_path: Path, monkeypatch):
    body, message = BAD_TASKS[case]
    name = write_module(tmp_path, f"bad_tasks_{case.replace(' ', '_')}", body)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SweepError, match=message) as err:
        build_benchmark(f"{name}:build", "task")
    assert "\n" not in str(err.value)


BAD_MODELS = {
    "not a module": ("def build(num_classes):\n    return 'resnet'\n", "returned str"),
    "wrong output": ("from torch import nn\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n",
                     r"outputs \[2, 3\]"),
    "wrong input": ("from torch import nn\ndef build(num_classes):\n    return nn.Linear(5, num_classes)\n",
                    "fails on a batch"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_entry_points_are_one_line_errors(case: str, tmp_path: Path, monkeypatch):
    body, message = BAD_MODELS[case]
    name = write_module(tmp_path, f"bad_models_{case.replace(' ', '_')}", body)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=message) as err:
        build_model(f"{name}:build", (1, 8, 8), 10)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("flags,message", [
    (["--benchmark", "nosuch.mod:build"], "module 'nosuch' not found"),
    (["--benchmark", "examples.my_tasks:nothing"], "has no function 'nothing'"),
    (["--model", "nosuch_models:build"], "module 'nosuch_models' not found"),
    (["--model", "examples.my_models:SmallNet"], "raised TypeError"),  # a class without its arguments
    (["--model", "not a module"], "model 'not a module' is unknown"),
])
def test_cli_bad_entry_point_exits_2_with_one_line(flags: list[str], message: str):
    out = run_cli("train", *flags, "--epochs", "1", "--no-progress", timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("sweep train: error:"), out.stderr


def test_user_module_in_the_current_folder_imports_like_python_m(tmp_path: Path):
    """`sweep train` from a folder holding the module, with the console script (no cwd on sys.path)."""
    import shutil
    import subprocess
    import sys

    shutil.copy(REPO / "examples" / "my_tasks.py", tmp_path / "here_tasks.py")
    script = "import sys; from sweep.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", script, "train", "--benchmark", "here_tasks:build", "--scenario",
                          "domain", "--hidden", "16", "--no-progress", "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# --- the pretrained fine-tune scenario ---------------------------------------------------------


def test_pretrained_source_accuracy_is_the_checkpoints_and_naive_fine_tuning_lowers_it(tmp_path: Path, example):
    config = TrainConfig(benchmark=TASKS, scenario="domain", epochs=3)
    model, _, source_val, source_test = pretrain(config, example)
    checkpoint = save_weights(model, tmp_path / "source.pt")
    state = torch.load(checkpoint, weights_only=True)  # a plain state_dict, loadable anywhere
    assert set(state) == set(unwrap(model).state_dict())

    result = run_config(config.replace(pretrained=str(checkpoint)), example)
    assert result.status == "finished"
    assert result.val[0, 0] == source_val and result.test[0, 0] == source_test  # evaluated, not trained
    assert result.initial_test[0] != source_test  # FWT's baseline is still the untrained model
    assert result.test[1, 1] > 0.5  # the target is learned...
    assert result.test[1, 0] < source_test - 0.1  # ...and naive fine-tuning costs the source
    ewc = run_config(config.replace(pretrained=str(checkpoint), strategy="ewc", ewc_lambda=1e4), example)
    assert ewc.test[0, 0] == source_test and ewc.test[1, 0] > result.test[1, 0]  # the Fisher came from the source


@pytest.mark.slow
def test_pretrain_cli_then_train_from_its_checkpoint(tmp_path: Path):
    import json

    checkpoint = tmp_path / "sub" / "source.pt"
    out = run_cli("pretrain", "--out", str(checkpoint), "--epochs", "2", "--hidden", "32", timeout=120)
    assert out.returncode == 0 and checkpoint.is_file() and "wrote" in out.stdout, out.stderr
    assert not list(checkpoint.parent.glob(".*.tmp"))  # written atomically, nothing left behind
    bench = build_benchmark("split-digits", "task")
    model = build_model("mlp", bench.input_shape, bench.num_classes, (32,))
    load_weights(model, checkpoint)  # a plain state_dict of the MLP
    source_test = float(evaluate(model, bench.tasks[0].test, 0, bench.task_masks()))
    out = run_cli("train", "--pretrained", str(checkpoint), "--epochs", "2", "--hidden", "32", "--json",
                  "--no-progress", timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accuracy"]["test"][0][0] == source_test
    out = run_cli("pretrain", "--out", str(tmp_path / "x.pt"), "--pretrained", str(checkpoint), timeout=120)
    assert out.returncode == 2 and "--pretrained makes no sense" in out.stderr


def test_prefix_cache_with_a_checkpoint_gives_the_same_run(tmp_path: Path, example: Benchmark):
    from sweep.tune.trial import run_trial

    model, _, _, _ = pretrain(TrainConfig(benchmark=TASKS, scenario="domain", hidden=(32,)), example)
    config = TrainConfig(benchmark=TASKS, scenario="domain", hidden=(32,), strategy="ewc",
                         pretrained=str(save_weights(model, tmp_path / "source.pt")))

    def matrices(prefix_dir: Path | None) -> dict:
        return run_trial(config, example, [0], lambda metrics: None,
                         prefix_dir=None if prefix_dir is None else str(prefix_dir))["accuracy"]

    assert matrices(None) == matrices(tmp_path / "cache") == matrices(tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_pretrained_checkpoint_errors_and_cache_key(tmp_path: Path, example):
    config = TrainConfig(benchmark=TASKS, scenario="domain", hidden=(64,))
    torch.manual_seed(0)
    model = build_model("mlp", example.input_shape, example.num_classes, (64,))
    good = save_weights(model, tmp_path / "good.pt")
    key = prefix_key(config.replace(pretrained=str(good)), example)
    save_weights(build_model("mlp", example.input_shape, example.num_classes, (64,)), good)  # same path, new content
    assert prefix_key(config.replace(pretrained=str(good)), example) != key
    other = save_weights(build_model("mlp", example.input_shape, example.num_classes, (32,)), tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save({"weights": [1, 2]}, tmp_path / "list.pt")
    for path, message in ((tmp_path / "missing.pt", "does not exist"), (other, "does not fit model MLP"),
                          (tmp_path / "junk.pt", "weights_only"), (tmp_path / "list.pt", "not a state_dict")):
        with pytest.raises(ConfigError, match=message) as err:
            run_config(config.replace(pretrained=str(path)), example)
        assert "\n" not in str(err.value)


def test_init_weights_keep_mismatched_shapes_at_their_initialisation(tmp_path: Path):
    torch.manual_seed(1)
    source = build_model("resnet18", (3, 16, 16), 5)
    path = save_weights(source, tmp_path / "r18.pt")
    torch.manual_seed(2)
    target = build_model("resnet18", (3, 16, 16), 10)  # another head
    with pytest.warns(UserWarning, match="2 tensors keep their initialisation"):
        kept = load_weights(target, path, strict=False, what="init_weights")
    assert kept == ["fc.bias", "fc.weight"]
    assert torch.equal(unwrap(target).layer1[0].conv1.weight, unwrap(source).layer1[0].conv1.weight)
    with pytest.raises(ConfigError, match="fc.weight"):
        load_weights(target, path)  # strict: a pretrained checkpoint must be this very model


@pytest.mark.slow
def test_mnist_then_fashion_from_a_checkpoint(data_root: Path, tmp_path: Path):
    """The design's case on real data: digits learned, then fine-tuned on fashion with one shared head."""
    config = TrainConfig(benchmark="mnist-fashion", scenario="domain", data_root=str(data_root), epochs=1)
    benchmark = load_benchmark(config)
    model, _, _, source_test = pretrain(config, benchmark)
    checkpoint = save_weights(model, tmp_path / "mnist.pt")
    result = run_config(config.replace(pretrained=str(checkpoint)), benchmark)
    assert source_test > 0.95 and result.test[0, 0] == source_test
    assert result.test[1, 1] > 0.8 and result.test[1, 0] < 0.8  # the digits collapse
    reverse = build_benchmark("fashion-mnist", "domain", data_root=data_root)
    assert [t.name for t in reverse.tasks] == ["fashion-mnist", "mnist"]
    assert torch.equal(reverse.tasks[0].test.x, benchmark.tasks[1].test.x)


# --- torchvision ResNets ------------------------------------------------------------------------


def random_images(shape: tuple[int, ...], n: int, classes: tuple[int, ...], seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8),
                 torch.tensor([classes[i % len(classes)] for i in range(n)]))


def tiny_images(shape: tuple[int, ...] = (3, 16, 16), n: int = 48) -> Benchmark:
    tasks = tuple(Task(f"task {t}", classes, *(random_images(shape, m, classes, 10 * t + k)
                                               for k, m in enumerate((n, 16, 16))))
                  for t, classes in enumerate(((0, 1), (2, 3))))
    return Benchmark("tiny", "task", tasks, 4, shape, {"num_tasks": 2})


def test_resnet_blocks_and_stem_fit_the_input():
    small = build_model("resnet18", (1, 28, 28), 10)
    names = [name for name, _ in named_layers(small)]
    assert names == ["stem", "layer1", "layer2", "layer3", "layer4", "head"] and len(small.layers()) == 6
    net = unwrap(small)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.in_channels == 1 and isinstance(net.maxpool, nn.Identity)
    assert small(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    large = unwrap(build_model("resnet18", (3, 64, 64), 7))
    assert large.conv1.kernel_size == (7, 7) and isinstance(large.maxpool, nn.MaxPool2d)
    assert [name for name, _ in named_layers(large)] == names  # the plain torchvision model counts the same
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_model("resnet18", (64,), 10)


def test_resnet18_frozen_layers_freeze_exactly_the_named_blocks():
    """frozen_layers=2: stem and layer1 (weights and BatchNorm statistics) bit for bit; the rest trains."""
    benchmark = tiny_images()
    config = TrainConfig(model="resnet18", strategy="freeze", frozen_layers=2, epochs=1, batch_size=16)
    torch.manual_seed(0)
    model = build_model("resnet18", benchmark.input_shape, benchmark.num_classes)
    strategy = build_strategy(config, len(model.layers()))
    snapshots = []
    train_sequence(benchmark, model, strategy, config,
                   callback=lambda r: snapshots.append({k: v.clone() for k, v in unwrap(model).state_dict().items()}))
    after_task1, after_task2 = snapshots
    frozen_prefixes = ("conv1.", "bn1.", "layer1.")
    frozen = [k for k in after_task1 if k.startswith(frozen_prefixes)]
    moved = [k for k in after_task1 if not k.startswith(frozen_prefixes)]
    assert any(k.endswith("running_mean") for k in frozen) and frozen and moved
    for k in frozen:
        assert torch.equal(after_task1[k], after_task2[k]), k  # weights and running statistics
    for block in ("layer2.", "layer3.", "layer4.", "fc."):
        assert any(not torch.equal(after_task1[k], after_task2[k]) for k in moved if k.startswith(block)), block
    assert model.training and all(m.training for m in model.modules())  # the mode itself is left alone


def test_frozen_batchnorm_stays_put_through_evaluation_and_train_mode():
    model = build_model("resnet18", (3, 16, 16), 4)
    from sweep.models import freeze_layers

    freeze_layers(model, 1)
    stem_bn = unwrap(model).bn1
    before = stem_bn.running_mean.clone()
    model.train()
    model(torch.rand(8, 3, 16, 16))
    assert torch.equal(stem_bn.running_mean, before) and stem_bn.training  # eval behaviour, train flag kept
    freeze_layers(model, 0)
    model(torch.rand(8, 3, 16, 16))
    assert not torch.equal(stem_bn.running_mean, before)  # unfrozen: statistics move again


# --- split-cifar10 ------------------------------------------------------------------------------


def fake_cifar(root: Path, per_batch: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.randint(0, 256, (per_batch, 3072)).astype(np.uint8),
                 "labels": [i % 10 for i in range(per_batch)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    return root


def test_split_cifar10_reads_torchvisions_batches(tmp_path: Path):
    root = fake_cifar(tmp_path)
    bench = build_benchmark("split-cifar10", "task", data_root=root)
    assert bench.input_shape == (3, 32, 32) and [t.classes for t in bench.tasks] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert len(bench.tasks[0].test) == 10 and len(bench.tasks[0].train) + len(bench.tasks[0].val) == 50
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as handle:
        first = pickle.load(handle)["data"][0].reshape(3, 32, 32)
    assert np.array_equal(bench.tasks[0].test.x[0].numpy(), first)  # channels first, as torchvision's ToTensor


def test_split_cifar10_without_files_or_network_is_one_line(tmp_path: Path, monkeypatch):
    import sweep.data.readers as readers

    monkeypatch.setattr(readers, "_download_cifar10", lambda root: "no network (test)")
    with pytest.raises(DataError, match="CIFAR-10 data not found.*no network") as err:
        build_benchmark("split-cifar10", "class", data_root=tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    (tmp_path / "evil").mkdir()
    fake_cifar(tmp_path / "evil")
    with open(tmp_path / "evil" / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": _Evil(str(tmp_path / "pwned")), "labels": []}, handle)
    with pytest.raises(DataError, match="not a CIFAR-10 python batch.*refusing"):
        build_benchmark("split-cifar10", "class", data_root=tmp_path / "evil")
    assert not (tmp_path / "pwned").exists()  # numpy arrays are the only objects a batch may build


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204 - what a malicious batch file would hold
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


# --- lr_decay and early stopping ----------------------------------------------------------------


def test_lr_decay_gives_earlier_layers_smaller_learning_rates():
    model = build_model("mlp", (1, 8, 8), 10, (16, 16))
    groups = layer_groups(model, [p for p in model.parameters()], 1e-2, 0.5)
    assert [g["lr"] for g in groups] == [2.5e-3, 5e-3, 1e-2]
    from sweep.models import freeze_layers

    groups = layer_groups(model, freeze_layers(model, 1), 1e-2, 0.5)  # frozen layers leave the optimizer
    assert [g["lr"] for g in groups] == [5e-3, 1e-2]


def test_lr_decay_and_early_stopping_act_on_the_fine_tune_only():
    base = TrainConfig(epochs=8, hidden=(32, 32))
    plain = run_config(base)
    decayed = run_config(base.replace(lr_decay=0.1))
    epochs: list[int] = []
    original = evaluation_mod.EarlyStop.__call__

    def spy(self, epoch: int) -> bool:
        epochs.append(epoch)
        return original(self, epoch)

    evaluation_mod.EarlyStop.__call__ = spy
    try:
        stopped = run_config(base.replace(early_stop_patience=1))
    finally:
        evaluation_mod.EarlyStop.__call__ = original
    for result in (decayed, stopped):
        assert np.array_equal(result.test[0], plain.test[0])  # task 1 trained identically (prefix-free)
    assert not np.array_equal(decayed.test[1], plain.test[1])
    assert decayed.test[1, 0] >= plain.test[1, 0]  # slower early layers keep more of task 1
    assert epochs and epochs[0] == 0 and len(epochs) < base.epochs  # stopped before the last epoch


def test_config_checks_the_new_fields():
    for values, message in (({"lr_decay": 0.0}, "lr_decay"), ({"lr_decay": 1.5}, "lr_decay"),
                            ({"early_stop_patience": -1}, "early_stop_patience"), ({"model": "vgg"}, "module:function"),
                            ({"pretrained": "a.pt", "init_weights": "b.pt"}, "pass one")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_mapping(values)
    assert TrainConfig(model="pkg.sub.models:make_net").model == "pkg.sub.models:make_net"
