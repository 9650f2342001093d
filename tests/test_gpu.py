"""GPU smoke tests: run only where CUDA is available."""

import json

import pytest
import torch

from sasg.cli.main import main
from sasg.data.fixtures import write_cifar

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_resnet18_preset_runs_a_few_iterations_on_cuda(tmp_path):
    write_cifar(tmp_path / "data" / "cifar10", n_train=200, n_test=50, num_classes=10, seed=0)
    out = tmp_path / "run"
    code = main(["compare", "--preset", "paper-cifar10", "--data-dir", str(tmp_path / "data"), "--device", "cuda",
                 "--iterations", "5", "--eval-every", "5", "--algos", "sgd,sasg", "--quiet", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["iterations"] for r in summary["records"]] == [5, 5]
    assert summary["records"][1]["num_parameters"] == 11_173_962
