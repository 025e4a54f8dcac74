"""Transfer learning the Caffe way: layer-at-a-time schedules, fine-tuning, net surgery, features off the shelf.

schema.py       the schedule and state-file messages (prototxt, defined in Python)
netedit.py      NetParameter edits: freeze (lr_mult 0), auxiliary heads, silencing losses, head replacement
schedule.py     reading a schedule, checking it against the net, planning each stage
layerwise.py    running a schedule stage by stage with Caffe's solvers, resumable
finetune.py     the "replace the head, train it, then the whole net" recipe as a two-stage schedule
surgery.py      weights by layer name: copy, rename, drop, prefix, merge, re-initialise, save
features.py     extracting any blob to NumPy/HDF5/LMDB and classifying it with scikit-learn
(Yosinski et al. 2014's transferability experiment is bench/transferability.py, not library code.)
"""

from pipeline.transfer.netedit import TransferError

__all__ = ["TransferError"]
