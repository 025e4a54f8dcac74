"""Where the model zoo's net templates live (prototxt/*.prototxt) and the forms they render in."""

from conftest import ROOT

ZOO = ROOT / "prototxt"
FORMS = {
    "lmdb": {},
    "dummy": {"data": "dummy"},
    "hdf5": {"data": "hdf5"},
    "input": {"data": "input"},
    "deploy": {"deploy": True},
}
