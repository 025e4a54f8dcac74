"""The default (non-bit-exact) path loads nothing of the bit-exact mode it does not use (issue 16)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

_PROBE = """
import decimal, json, sys
default_prec = decimal.Context().prec
import pipeline.net
from pipeline.net import Net
from pipeline.text.prototxt import read_net
net = Net(read_net("prototxt/lenet.prototxt", {"deploy": True}), phase="TEST", seed=3)
net.forward()
print(json.dumps({
    "prec": decimal.getcontext().prec,
    "default_prec": default_prec,
    "caffe_rng": "pipeline.exact.caffe_rng" in sys.modules,
    "tables": "pipeline.exact.caffe_rng_tables" in sys.modules,
}))
"""


def _probe(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_default_lenet_loads_no_caffe_rng_and_keeps_decimal_precision():
    seen = _probe(_PROBE)
    assert seen["prec"] == seen["default_prec"] == 28
    assert not seen["caffe_rng"] and not seen["tables"]


def test_caffe_rng_computes_its_tables_in_a_local_decimal_context():
    seen = _probe(
        "import decimal, json, numpy as np\n"
        "from pipeline.exact.caffe_rng import CaffeRNG, _exponential_tables\n"
        "assert _exponential_tables.cache_info().currsize == 0\n"  # lazily, on first use
        "rng = CaffeRNG(1)\n"
        "values = [float(rng._unit_exponential()) for _ in range(2000)]\n"
        "print(json.dumps({'prec': decimal.getcontext().prec, 'built': _exponential_tables.cache_info().currsize,"
        " 'mean': sum(values) / len(values)}))"
    )
    assert seen["prec"] == 28 and seen["built"] == 1
    assert 0.9 < seen["mean"] < 1.1
