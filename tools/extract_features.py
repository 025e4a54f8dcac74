#!/usr/bin/env python3
"""Caffe's extract_features, and the off-the-shelf baseline: features of any blob, then a scikit-learn classifier.

Extract (TEST phase; the data layers of --data-phase) and save:
    tools/extract_features.py --model M --weights W --blobs fc7[,fc6] --output feats.npz [--iterations N]
        --output: .npz or .h5 (one file), .npy or an LMDB directory (one per blob, comma-separated); --format to force
Baseline in one command (features of the TRAIN data to fit, of the TEST data to score):
    tools/extract_features.py --model M --weights W --blobs fc7 --classifier linear_svm [--output feats.npz]
Classify features saved earlier:
    tools/extract_features.py --train-features a.npz --test-features b.npz --blobs fc7 --classifier logreg

Without --iterations one pass over the data is taken when its size is known (LMDB, single HDF5 file, MemoryData).
Exit status: 0 done, 1 bad input (a blob the net lacks, a missing file, ...).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import run_guarded  # noqa: E402


def parse_args(argv):
    from pipeline.transfer.features import CLASSIFIERS, FORMATS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    return parser.parse_args(argv)


def _suffixed(outputs: list[str], tag: str) -> list[str]:
    result = []
    for output in outputs:
        path = Path(output)
        result.append(str(path.with_name(f"{path.stem}_{tag}{path.suffix}")))
    return result


def run(args) -> int:
    from pipeline.cli._common import device_from_flag
    from pipeline.glog import get_logger, setup_logging
    from pipeline.prototxt import read_net
    from pipeline.template import parse_assignments
    from pipeline.transfer import features as ft
    from pipeline.transfer.netedit import TransferError

    setup_logging()
    log = get_logger()
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
