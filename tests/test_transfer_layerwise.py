"""Layer-at-a-time schedules: only the scheduled parameters move, resuming is exact, bad schedules fail up front."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.errors import PrototxtError
from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.solvers.base import NONE, STOP
from pipeline.text.prototxt import parse_text
from pipeline.transfer.layerwise import LayerwiseRun
from pipeline.transfer.netedit import TransferError
from pipeline.transfer.schedule import parse_schedule
from pipeline.transfer.surgery import read_weights
from pipeline.weights.io import save_caffemodel

NET = """
name: "tiny"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TRAIN }
  hdf5_data_param { source: "train.txt" batch_size: 8 } }
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TEST }
  hdf5_data_param { source: "test.txt" batch_size: 8 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 8 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.2 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "ip2" top: "ip2" }
layer { name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "frozen" type: "InnerProduct" bottom: "ip3" top: "frozen" param { lr_mult: 0 } param { lr_mult: 0 }
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip3" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip3" bottom: "label" top: "accuracy" include { phase: TEST } }
"""

SCHEDULE = """
stage { name: "one" train: "ip1" max_iter: 5 base_lr: 0.1 aux_head { num_output: 3 } }
stage { name: "two" train: "ip2" max_iter: 4 aux_head { num_output: 3 } solver { momentum: 0.5 } }
stage { name: "all" train_all: true max_iter: 6 base_lr: 0.01 }
"""


def write_split(folder: Path, name: str, seed: int, rows: int = 40) -> None:
    rng = np.random.RandomState(seed)
    x = rng.randn(rows, 6).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.float32) + (x[:, 1] > 0)).astype(np.float32)
    with h5py.File(folder / f"{name}.h5", "w") as f:
        f["data"], f["label"] = x, y
    (folder / f"{name}.txt").write_text(f"{name}.h5\n")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_split(tmp_path, "train", 0)
    write_split(tmp_path, "test", 1)
    (tmp_path / "snap").mkdir()
    return tmp_path


def solver_param(test: bool = True) -> caffe_pb2.SolverParameter:
    text = f"""net_param {{ {NET} }} base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed" max_iter: 10
        display: 2 snapshot_prefix: "snap/tiny" solver_mode: CPU random_seed: 7"""
    if test:
        text += " test_iter: 2 test_interval: 100"
    return parse_text(text, caffe_pb2.SolverParameter())


def initial_weights(path: str = "init.caffemodel") -> str:
    save_caffemodel(Net(solver_param().net_param, seed=3), path)
    return path


def run(schedule: str = SCHEDULE, **kwargs):
    kwargs.setdefault("weights", [initial_weights()])
    return LayerwiseRun(solver_param(), parse_schedule(schedule), progress=False, **kwargs).run()


def changed_layers(before: dict, after: dict) -> set[str]:
    changed = set()
    for name, blobs in before.items():
        if any(not np.array_equal(a, b) for a, b in zip(blobs, after[name])):
            changed.add(name)
    return changed


def test_each_stage_changes_exactly_its_layers(folder):
    result = run()
    assert not result.stopped and [s.name for s in result.stages] == ["one", "two", "all"]
    weights = [read_weights("init.caffemodel")] + [read_weights(s.weights) for s in result.stages]
    body = ["ip1", "ip2", "ip3", "frozen"]
    expected = [{"ip1"}, {"ip2"}, {"ip1", "ip2", "ip3"}]
    for before, after, want in zip(weights, weights[1:], expected):
        assert changed_layers({k: before[k] for k in body}, after) == want
    # Aux heads were trained and dropped afterwards; the net's own frozen layer never moved.
    assert "aux_one_fc" in weights[1] and "aux_one_fc" not in weights[2] and "aux_two_fc" not in weights[3]
    assert result.final_weights == "snap/tiny_all_iter_6.caffemodel"
    state = Path("snap/tiny_layerwise.state").read_text()
    assert state.count("done: true") == 3


def test_stage_nets_freeze_silence_and_attach_the_head(folder):
    job = LayerwiseRun(solver_param(), parse_schedule(SCHEDULE), progress=False)
    one = job.plans[0]
    layers = {layer.name: layer for layer in one.train_net.layer}
    assert [p.lr_mult for p in layers["ip2"].param] == [0, 0] and [p.decay_mult for p in layers["ip2"].param] == [0, 0]
    assert not layers["ip1"].param  # trainable layers keep their specs as written
    assert list(layers["loss"].loss_weight) == [0] and one.silenced == ["loss"]
    assert layers["aux_one_fc"].bottom == ["ip1"] and layers["aux_one_loss"].type == "SoftmaxWithLoss"
    assert "aux_one_accuracy" in {layer.name for layer in one.test_nets[0].layer}
    assert job.plans[2].trainable is None and not job.plans[2].silenced
    assert job.plans[1].solver_overrides.momentum == 0.5 and job.plans[1].max_iter == 4


def test_distillation_head_infers_outputs_from_the_teacher_blob(folder):
    schedule = 'stage { name: "kd" train: "ip1" max_iter: 2 aux_head { teacher: "frozen" ' + (
        "distill_param { temperature: 2 alpha: 0.5 } } }"
    )
    plan = LayerwiseRun(solver_param(), parse_schedule(schedule), progress=False).plans[0]
    loss = next(layer for layer in plan.train_net.layer if layer.name == "aux_kd_loss")
    fc = next(layer for layer in plan.train_net.layer if layer.name == "aux_kd_fc")
    assert loss.type == "KnowledgeDistillation" and list(loss.bottom) == ["aux_kd_fc", "frozen", "label"]
    assert fc.inner_product_param.num_output == 3


class StopAt:
    """An action_request that stops the run once, in stage `stage` after iteration `iteration`."""

    def __init__(self, stage: str, iteration: int):
        self.stage, self.iteration, self.solver, self.plan, self.fired = stage, iteration, None, None, False

    def on_solver(self, solver, plan):
        self.solver, self.plan = solver, plan

    def __call__(self):
        if not self.fired and self.plan.name == self.stage and self.solver.iter == self.iteration:
            self.fired = True
            return STOP
        return NONE


@pytest.mark.parametrize("stage, iteration", [("one", 5), ("two", 2), ("all", 3)])
def test_resume_continues_exactly(folder, stage, iteration):
    reference = read_weights(run().final_weights)
    for path in Path("snap").iterdir():
        path.unlink()
    stop = StopAt(stage, iteration)
    first = run(on_solver=stop.on_solver, action_request=stop)
    assert first.stopped and stop.fired
    assert first.stages[-1].name == stage and first.stages[-1].iter == iteration
    resumed = run()  # a new process would do the same: everything comes from the state file and snapshots
    assert not resumed.stopped
    final = read_weights(resumed.final_weights)
    assert changed_layers(reference, final) == set()


def test_resume_from_a_snapshot_without_state_record(folder):
    """A crash after a periodic snapshot: the stage continues from its latest snapshot on disk."""
    schedule = SCHEDULE.replace("momentum: 0.5", "momentum: 0.5 snapshot: 1")
    stop = StopAt("two", 3)
    run(schedule, on_solver=stop.on_solver, action_request=stop)
    state = Path("snap/tiny_layerwise.state")
    text = state.read_text()
    state.write_text(text[: text.index("solverstate:")] + '}\nstage {\n  name: "all"\n}\n')
    job = LayerwiseRun(solver_param(), parse_schedule(schedule), progress=False)
    record = job.load_state().stage[1]
    assert not record.solverstate and str(job._latest_snapshot(job.plans[1], record)).endswith("two_iter_3.solverstate")
    result = job.run()
    assert not result.stopped and result.stages[1].iter == 4


def test_state_of_another_schedule_is_refused(folder):
    run(SCHEDULE)
    with pytest.raises(TransferError, match="different schedule"):
        run(SCHEDULE.replace("max_iter: 6", "max_iter: 7"))


@pytest.mark.parametrize(
    "schedule, message",
    [
        ('stage { name: "a" train: "conv9" max_iter: 2 }', "no layer named 'conv9'"),
        ('stage { name: "a" train: "ip4" max_iter: 2 }', "did you mean 'ip3'"),
        ('stage { name: "a" train: "relu1" max_iter: 2 }', "'relu1' (ReLU) has no parameters"),
        ('stage { name: "a" train: "frozen" max_iter: 2 }', "frozen by the net itself"),
        ('stage { name: "a" train: "conv*" max_iter: 2 }', "matches no layer with trainable parameters"),
        ('stage { name: "a" max_iter: 2 }', "trains nothing"),
        ('stage { name: "a" train: "ip1" }', "needs `max_iter`"),
        ('stage { name: "a b" train: "ip1" max_iter: 2 }', "needs a name"),
        ('stage { name: "a" train: "ip1" max_iter: 2 } stage { name: "a" train: "ip2" max_iter: 2 }', "used twice"),
        ('stage { name: "a" train: "ip1" max_iter: 2 aux_head { bottom: "pool9" num_output: 3 } }', "no blob named"),
        ('stage { name: "a" train: "ip1" max_iter: 2 aux_head { teacher: "t_ip2" } }', "teacher: net 'tiny' has no"),
        ('stage { name: "a" train: "ip1" max_iter: 2 aux_head { } }', "needs num_output"),
        ('stage { name: "a" train_all: true max_iter: 2 aux_head { num_output: 3 } }', "must name the head's"),
        ("", "has no stage"),
    ],
)
def test_bad_schedules_fail_before_training(folder, schedule, message):
    with pytest.raises(TransferError, match=re.escape(message)):
        LayerwiseRun(solver_param(), parse_schedule(schedule), progress=False)
    assert not list(Path("snap").iterdir())


def test_schedule_syntax_errors_name_file_and_line():
    with pytest.raises(PrototxtError, match=r"s.schedule:2:.*no field named \"trian\""):
        parse_schedule('stage {\n  trian: "ip1" }', "s.schedule")


def test_cli_runs_and_reports_bad_input(folder, capsys):
    from pipeline.cli.tools import train_layerwise

    Path("net.prototxt").write_text(NET)
    Path("solver.prototxt").write_text(
        'net: "net.prototxt" test_iter: 2 test_interval: 100 base_lr: 0.05 lr_policy: "fixed" max_iter: 3\n'
        'snapshot_prefix: "snap/cli" solver_mode: CPU random_seed: 1\n'
    )
    Path("s.schedule").write_text(SCHEDULE)
    assert train_layerwise.main(["--solver", "solver.prototxt", "--schedule", "s.schedule", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "final weights: snap/cli_all_iter_6.caffemodel" in out and "stage two: iter 4 done" in out
    Path("bad.schedule").write_text('stage { name: "a" train: "relu2" max_iter: 1 }')
    assert train_layerwise.main(["--solver", "solver.prototxt", "--schedule", "bad.schedule"]) == 1
    assert "'relu2' (ReLU) has no parameters" in capsys.readouterr().err
    initial_weights()
    args = [
        "--solver",
        "solver.prototxt",
        "--schedule",
        "s.schedule",
        "--restart",
        "--weights-prefix",
        "init.caffemodel:x_",
    ]
    assert train_layerwise.main(args) == 1  # every layer renamed x_*: nothing of the file fits the net
    assert "init.caffemodel: no layer of this file matches a layer of the net 'tiny'" in capsys.readouterr().err


def test_cli_set_reaches_the_schedule_and_solver_fields_and_refuses_typos(folder, capsys):
    """tools/train_layerwise.py --set: the solver's, its net's and the schedule's template variables, else a
    SolverParameter field, else an error naming it."""
    from pipeline.cli.tools import train_layerwise

    Path("net.prototxt").write_text(NET)
    Path("solver.prototxt").write_text(
        'net: "net.prototxt" test_iter: 2 test_interval: 100 base_lr: 0.05 lr_policy: "fixed" max_iter: 3\n'
        'snapshot_prefix: "snap/set" solver_mode: CPU random_seed: 1\n'
    )
    Path("s.schedule").write_text('stage { name: "a" train: "ip1" max_iter: {{ steps }} }')
    args = ["--solver", "solver.prototxt", "--schedule", "s.schedule", "--no-progress"]
    assert train_layerwise.main([*args, "--set", "step=2"]) == 1
    assert "unused --set 'step' (did you mean 'steps'?)" in capsys.readouterr().err
    assert train_layerwise.main([*args, "--set", "steps=2", "--set", "random_seed=5"]) == 0
    captured = capsys.readouterr()
    assert "Setting random_seed = 5 from --set" in captured.err and "set_a_iter_2.caffemodel" in captured.out


def test_freeze_keeps_specs_and_can_fix_batchnorm_statistics():
    from pipeline.text.prototxt import net_from_string
    from pipeline.transfer.netedit import freeze

    net = net_from_string(
        """name: "bn"
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" param { name: "shared" lr_mult: 3 }
          convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }
        layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
        layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" inner_product_param { num_output: 2 } }"""
    )
    frozen = {layer.name: layer for layer in freeze(net, ["ip"], freeze_batchnorm_stats=True).layer}
    assert [(p.name, p.lr_mult, p.decay_mult) for p in frozen["conv"].param] == [("shared", 0, 0)]
    assert len(frozen["bn"].param) == 3 and frozen["bn"].batch_norm_param.use_global_stats
    assert not frozen["ip"].param and not frozen["data"].param
    assert freeze(net, None) == net


def test_stage_solver_fields_replace_repeated_ones():
    from pipeline.transfer.schedule import merge_over

    base = caffe_pb2.SolverParameter(base_lr=0.1, stepvalue=[10, 20], lr_policy="multistep")
    merged = merge_over(base, caffe_pb2.SolverParameter(stepvalue=[5], momentum=0.5))
    assert list(merged.stepvalue) == [5] and merged.base_lr == pytest.approx(0.1) and merged.momentum == 0.5


def test_a_stage_shorter_than_test_interval_reports_its_final_score(folder, capsys):
    """test_interval (100) exceeds every stage's length: each stage still tests its final weights at its end, so
    the summary's score is the stage's final one, not iteration 0's."""
    import torch

    from pipeline.weights.io import copy_weights

    job = LayerwiseRun(solver_param(), parse_schedule(SCHEDULE), progress=False, weights=[initial_weights()])
    result = job.run()
    for plan, stage in zip(job.plans, result.stages):
        (scores,) = stage.test_scores
        assert scores["iter"] == stage.iter == plan.max_iter > 0
        net = Net(plan.test_nets[0], "TEST")
        copy_weights(net, stage.weights)
        net.eval()
        with torch.no_grad():
            [net.forward() for _ in range(2)]  # the batches the iteration-0 test (test_initialization) read
            final = [net.forward() for _ in range(2)]
        for name in [k for k in scores if "accuracy" in k or "loss" in k]:
            expected = np.mean([float(outputs[name]) for outputs in final])
            assert scores[name] == pytest.approx(expected, abs=1e-5), (stage.name, name)
    assert result.print_summary("stage ") == 0
    out = capsys.readouterr().out
    assert "  test (iter 5): " in out and "  test (iter 6): " in out and "(iter 0" not in out
