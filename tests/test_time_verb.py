"""`time`: one untimed warm-up forward/backward (as `caffe time` does) before the timed loop, so one-time lazy
initialisation is not charged to the first layer; no timed assertion, the warm-up's numbers are stubbed."""

import re

import pipeline.cli.time as time_verb
from pipeline.cli import main

LENET = "prototxt/lenet.prototxt"


def test_warm_up_runs_and_is_left_out_of_the_averages(capsys, monkeypatch):
    real = time_verb.layer_times
    calls = []

    def layer_times(net, device):
        forward, backward = real(net, device)
        calls.append(len(forward))
        # The first (warm-up) pass reports huge times; if they were counted, the averages would show them.
        value = 1000.0 if len(calls) == 1 else 2.0
        return [value] * len(forward), [value] * len(backward)

    monkeypatch.setattr(time_verb, "layer_times", layer_times)
    iterations = 3
    argv = ["time", "--model", LENET, "--set", "data=dummy", "--set", "batch=2", "--iterations", str(iterations)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert len(calls) == iterations + 1
    order = ["Performing Forward", "Initial loss:", "Performing Backward", "*** Benchmark begins ***"]
    positions = [err.index(text) for text in order + ["Iteration: 1 forward-backward"]]
    assert positions == sorted(positions)
    assert f"Testing for {iterations} iterations." in err
    per_layer = re.findall(r"\] +(\w+)\t(forward|backward): ([\d.e+-]+) ms\.", err)
    assert {name for name, _, _ in per_layer} >= {"conv1", "ip2", "loss"}
    assert all(float(ms) == 2.0 for _, _, ms in per_layer), per_layer
