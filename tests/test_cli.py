"""The caffe-style verbs test, time and device_query, and clean errors instead of tracebacks."""

import pytest

from pipeline.cli import main
from pipeline.net import Net
from pipeline.text.prototxt import read_net
from pipeline.weights.io import save_caffemodel

LENET = "prototxt/lenet.prototxt"


@pytest.fixture(scope="module")
def lenet_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "lenet.caffemodel"
    save_caffemodel(Net(read_net(LENET, {"data": "dummy"}), "TEST", seed=1), path)
    return str(path)


def test_test_verb_prints_caffes_lines(capsys, lenet_weights):
    rc = main(
        [
            "test",
            "--model",
            LENET,
            "--set",
            "data=dummy",
            "--set",
            "test_batch=8",
            "--weights",
            lenet_weights,
            "--iterations",
            "2",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0
    assert "Batch 0, accuracy = " in err and "Batch 1, loss = " in err
    assert "] Loss: " in err and "] accuracy = " in err and "(* 1 = " in err
    assert err.splitlines()[0][0] == "I" and "] " in err.splitlines()[0]


def test_time_verb_reports_per_layer_and_totals(capsys):
    rc = main(["time", "--model", LENET, "--set", "data=dummy", "--set", "batch=4", "--iterations", "2"])
    err = capsys.readouterr().err
    assert rc == 0
    for text in (
        "Initial loss:",
        "conv1\tforward:",
        "conv1\tbackward:",
        "Average Forward pass:",
        "Average Backward pass:",
        "Average Forward-Backward:",
        "Total Time:",
    ):
        assert text in err


def test_device_query(capsys):
    assert main(["device_query"]) == 0
    assert "Torch version" in capsys.readouterr().err


def test_errors_are_one_line_not_tracebacks(capsys, tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "x" type: "Nope" top: "x" }\n')
    assert main(["test", "--model", str(bad), "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "unknown layer type 'Nope'" in err


def test_weights_matching_no_layer_is_an_error(capsys, tmp_path, lenet_weights):
    other = tmp_path / "other.prototxt"
    other.write_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" inner_product_param '
        "{ num_output: 2 } }\n"
    )
    assert main(["test", "--model", str(other), "--weights", lenet_weights, "--iterations", "1"]) == 1
    assert "no layer of this file matches" in capsys.readouterr().err


def test_caffe_single_dash_flags_become_ours():
    """`caffe train -solver s -weights w -gpu 0`, gflags style (`-name value` or `-name=value`), for every flag the
    verb has; negative numbers stay values, `-h` stays help, nothing after `--` changes."""
    from pipeline.cli import build_parser, caffe_flags

    parser = build_parser()
    argv = ["train", "-solver", "s.prototxt", "-weights=a.caffemodel,b.caffemodel", "-snapshot", "x.solverstate"]
    argv += ["-gpu", "0", "-sigint_effect", "none", "-sighup_effect=stop", "-level", "-1", "-stage", "a,b"]
    args = parser.parse_args(caffe_flags(parser, argv))
    assert (args.solver, args.weights, args.snapshot, args.gpu) == (
        "s.prototxt",
        "a.caffemodel,b.caffemodel",
        "x.solverstate",
        "0",
    )
    assert (args.sigint_effect, args.sighup_effect, args.level, args.stage) == ("none", "stop", -1, "a,b")
    argv = ["test", "-model", "m.prototxt", "-weights", "w", "-iterations", "7", "-phase", "TRAIN", "-level=-2"]
    args = parser.parse_args(caffe_flags(parser, argv))
    assert (args.model, args.weights, args.iterations, args.phase, args.level) == ("m.prototxt", "w", 7, "TRAIN", -2)
    assert caffe_flags(parser, ["time", "-model", "m", "--set", "x=-3", "-h"]) == [
        "time",
        "--model",
        "m",
        "--set",
        "x=-3",
        "-h",
    ]
    assert caffe_flags(parser, ["time", "--", "-model"]) == ["time", "--", "-model"]
    assert caffe_flags(parser, ["time", "-nonsense", "-1.5"]) == ["time", "-nonsense", "-1.5"]


def test_caffe_single_dash_flags_on_the_command_line(capsys):
    rc = main(["time", "-model", LENET, "-set", "data=dummy", "-set=batch=2", "-iterations", "1", "-phase", "TRAIN"])
    assert rc == 0 and "Average Forward pass:" in capsys.readouterr().err


def test_unused_set_is_an_error_for_test_and_time(capsys):
    """No solver here: a --set that the model template does not read is an error, with the nearest name."""
    assert main(["time", "--model", LENET, "--set", "data=dummy", "--set", "bach=4", "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert "unused --set 'bach' (did you mean 'batch'?): not a template variable of prototxt/lenet.prototxt" in err
    assert main(["test", "--model", LENET, "--set", "data=dummy", "--set", "max_iter=4"]) == 1
    assert "unused --set 'max_iter'" in capsys.readouterr().err


def test_gpu_flag_without_cuda_is_a_clear_error(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["time", "--model", LENET, "--set", "data=dummy", "--gpu", "0", "--iterations", "1"]) == 1
    assert "no CUDA device is available here" in capsys.readouterr().err
