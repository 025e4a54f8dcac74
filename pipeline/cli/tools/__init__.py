"""The tools (Caffe's, same names, and ours), each a `main()` behind a console script of pyproject.toml's
[project.scripts] and a thin `tools/<name>.py` wrapper. Tools whose logic lives in a library module point there
(pipeline.data.convert, pipeline.data.prepare, pipeline.viz.cli, pipeline.sweep.run); the rest are here:

extract_features.py       Caffe's extract_features (any blob to LMDB/HDF5/NumPy)
finetune.py               replace the head, train it, then the whole net
net_surgery.py            weights by layer name: copy, rename, drop, prefix, merge, re-initialise, save
train_layerwise.py        layer-at-a-time schedules
teacher_student_story.py  `make train`'s story: teacher, student alone, student distilled
"""

from __future__ import annotations


def upgrade_net_proto_text() -> int:
    """Caffe's upgrade_net_proto_text IN OUT."""
    from pipeline.weights.upgrade_tools import upgrade_tool_main

    return upgrade_tool_main("text")


def upgrade_net_proto_binary() -> int:
    """Caffe's upgrade_net_proto_binary IN OUT."""
    from pipeline.weights.upgrade_tools import upgrade_tool_main

    return upgrade_tool_main("binary")
