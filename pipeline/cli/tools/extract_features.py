"""Caffe's extract_features, and the off-the-shelf baseline: features of any blob, then a scikit-learn classifier.

Extract (TEST phase; the data layers of --data-phase) and save:
    tools/extract_features.py --model M --weights W --blobs fc7[,fc6] --output feats.npz [--iterations N]
        --output: .npz or .h5 (one file), .npy or an LMDB directory (one per blob, comma-separated); --format to force
Baseline in one command (features of the TRAIN data to fit, of the TEST data to score):
    tools/extract_features.py --model M --weights W --blobs fc7 --classifier linear_svm [--output feats.npz]
Classify features saved earlier:
    tools/extract_features.py --train-features a.npz --test-features b.npz --blobs fc7 --classifier logreg

Caffe's positional form (BVLC tools/extract_features.cpp) works too, and writes the same LMDBs as the flags:
    tools/extract_features.py pretrained_net_param feature_extraction_proto_file \
        extract_feature_blob_name1[,name2,...] save_feature_dataset_name1[,name2,...] num_mini_batches db_type \
        [CPU/GPU] [DEVICE_ID=0] [--flags...]
    = --weights W --model M --blobs B --output D --iterations N --format lmdb [--gpu DEVICE_ID]
    db_type: lmdb (leveldb is not supported: no LevelDB binding here); one dataset per blob, as Caffe checks.

Without --iterations one pass over the data is taken when its size is known (LMDB, single HDF5 file, MemoryData).
Exit status: 0 done, 1 bad input (a blob the net lacks, a missing file, ...).
"""

import argparse
import json
import sys
from pathlib import Path

from pipeline.cli import run_guarded

CAFFE_USAGE = (
    "extract_features pretrained_net_param feature_extraction_proto_file extract_feature_blob_name1[,name2,...] "
    "save_feature_dataset_name1[,name2,...] num_mini_batches db_type [CPU/GPU] [DEVICE_ID=0]"
)


def parse_args(argv):
    """The flag form, or Caffe's positional one (leading arguments that are not flags), as the same namespace."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    n = 0
    while n < min(len(argv), 8) and not argv[n].startswith("-"):
        n += 1
    if n == 0:
        args = parser.parse_args(argv)
        args.db_type = args.num_mini_batches = None
        return args
    given = argv[:n]
    if n < 6:
        parser.error(f"Caffe's positional form takes 6 to 8 arguments (see usage above), got {n}")
    flags = ["--weights", given[0], "--model", given[1], "--blobs", given[2], "--output", given[3]]
    args = parser.parse_args(flags + argv[n:])
    args.num_mini_batches, args.db_type = given[4], given[5]
    if n > 6 and given[6] == "GPU":  # as Caffe: anything but GPU is the CPU
        args.gpu = given[7] if n > 7 else "0"
    return args


def _caffe_positional(args) -> None:
    """Check the positional form's arguments as Caffe's tool does, and turn them into the flag form's."""
    from pipeline.transfer.netedit import TransferError

    if args.db_type == "leveldb":
        raise TransferError(
            "db_type leveldb is not supported (no LevelDB binding is installed here): use lmdb, which Caffe reads "
            "the same way, or the flag form's .npy/.npz/.h5 outputs"
        )
    if args.db_type != "lmdb":
        raise TransferError(f"unknown db_type '{args.db_type}' (Caffe's are lmdb and leveldb)")
    try:
        args.iterations = int(args.num_mini_batches)
    except ValueError:
        raise TransferError(f"num_mini_batches must be a whole number, got '{args.num_mini_batches}'") from None
    blobs = [b for b in args.blobs.split(",") if b]
    datasets = [d for d in args.output.split(",") if d]
    if len(blobs) != len(datasets):
        raise TransferError(
            f"the number of blob names and dataset names must be equal ({len(blobs)} blobs, {len(datasets)} datasets)"
        )
    args.format = "lmdb"


def _parser() -> argparse.ArgumentParser:
    from pipeline.transfer.features import CLASSIFIERS, FORMATS

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage=f"%(prog)s --model M --blobs B ... | {CAFFE_USAGE}"
    )
    parser.add_argument("--model", default=None, help="net prototxt (may be a Jinja template)")
    parser.add_argument("--weights", default="", help="comma-separated caffemodels")
    parser.add_argument("--blobs", required=True, help="comma-separated blob names")
    parser.add_argument("--output", default="", help="feature file(s), comma-separated where one per blob")
    parser.add_argument("--format", default=None, choices=FORMATS, help="default: from the output's extension")
    parser.add_argument("--iterations", type=int, default=None, help="batches (default: one pass over the data)")
    parser.add_argument("--test-iterations", type=int, default=None, help="batches of the TEST data (baseline)")
    parser.add_argument("--data-phase", default="TEST", choices=["TRAIN", "TEST"], help="whose data layers to read")
    parser.add_argument("--label-blob", default="label", help="blob holding the labels ('' for none)")
    parser.add_argument("--classifier", default=None, choices=CLASSIFIERS, help="train and score a classifier")
    parser.add_argument("--normalize", default="l2", choices=["l2", "standard", "none"], help="feature scaling")
    parser.add_argument("--C", dest="c", type=float, default=1.0, help="inverse regularisation (SVM, logreg)")
    parser.add_argument("--train-features", default=None, help="saved features to fit the classifier on")
    parser.add_argument("--test-features", default=None, help="saved features to score it on")
    parser.add_argument("--json", default=None, help="write the classifier report here")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="template variable")
    parser.add_argument("--gpu", default=None, help="GPU id; CPU when absent")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    return parser


def _suffixed(outputs: list[str], tag: str) -> list[str]:
    result = []
    for output in outputs:
        path = Path(output)
        result.append(str(path.with_name(f"{path.stem}_{tag}{path.suffix}")))
    return result


def run(args) -> int:
    from pipeline.cli._common import device_from_flag
    from pipeline.glog import get_logger, setup_logging
    from pipeline.text.prototxt import read_net
    from pipeline.text.template import parse_assignments
    from pipeline.transfer import features as ft
    from pipeline.transfer.netedit import TransferError

    setup_logging()
    log = get_logger()
    if args.db_type is not None:
        _caffe_positional(args)
    blobs = [b for b in args.blobs.split(",") if b]
    outputs = [o for o in args.output.split(",") if o]
    if args.train_features or args.test_features:
        if not (args.train_features and args.test_features and args.classifier):
            raise TransferError("--train-features needs --test-features and --classifier")
        if len(blobs) != 1:
            raise TransferError("classify one blob at a time")
        train = ft.read_features(args.train_features, blobs[0])
        test = ft.read_features(args.test_features, blobs[0])
        return report(ft, args, (train.blobs[blobs[0]], train.labels), (test.blobs[blobs[0]], test.labels))
    if not args.model:
        raise TransferError("--model is required to extract features")
    if not args.classifier and not outputs:
        raise TransferError("give --output (where to write the features) and/or --classifier")
    net_param = read_net(args.model, parse_assignments(args.set))
    weights = [w for w in args.weights.split(",") if w]
    device = device_from_flag(args.gpu)
    phases = ["TRAIN", "TEST"] if args.classifier else [args.data_phase]
    extracted = {}
    for phase in phases:
        net = ft.build_feature_net(net_param, weights, phase, device, args.model)
        iterations = args.test_iterations if phase == "TEST" and args.classifier else args.iterations
        extracted[phase] = ft.extract(net, blobs, iterations, args.label_blob or None, args.progress)
        log.info("Extracted %d items of %s from the %s data", len(extracted[phase]), ", ".join(blobs), phase)
        if outputs:
            targets = _suffixed(outputs, phase.lower()) if len(phases) > 1 else outputs
            for path in ft.write_features(extracted[phase], targets, args.format):
                print(f"wrote {path}")
    if args.classifier:
        if len(blobs) != 1:
            raise TransferError("--classifier uses one blob: give one in --blobs")
        train, test = extracted["TRAIN"], extracted["TEST"]
        return report(ft, args, (train.blobs[blobs[0]], train.labels), (test.blobs[blobs[0]], test.labels))
    return 0


def report(ft, args, train, test) -> int:
    result = ft.classify(train, test, args.classifier, args.normalize, args.c)
    print(
        f"{result.classifier} on {args.blobs} ({result.dims} dims, {result.n_train} train / {result.n_test} test): "
        f"accuracy = {result.accuracy:.4f} (train {result.train_accuracy:.4f}, fit {result.seconds:.1f} s)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result.__dict__, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    return run_guarded(run, parse_args(argv), "extract_features")


if __name__ == "__main__":
    sys.exit(main())
