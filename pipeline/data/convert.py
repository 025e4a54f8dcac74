"""Caffe's dataset tools: convert_mnist_data, convert_cifar_data, convert_imageset and compute_image_mean.

Each writes what the Caffe tool of the same name writes (record layout, keys, order), into LMDB only. The
`main_*` functions are the command lines (`python tools/<name>.py --help`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pipeline.errors import DataError, PipelineError
from pipeline.glog import get_logger, setup_logging
from pipeline.proto import caffe_pb2

from . import datasets
from .images import encode_image, read_image, read_list_file
from .lmdb_source import LmdbReader, LmdbWriter, datum_array, make_datum, make_encoded_datum, parse_datum

log = get_logger()
CIFAR_BATCH = 10000  # Caffe numbers training records as if every batch held this many
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif", ".webp"}


def write_images(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    key_format: str,
    first_key: int = 0,
    overwrite: bool = False,
) -> int:
    """Raw uint8 Datum records (C, H, W) with keys `key_format % (first_key + i)`; returns the count."""
    images = images if images.ndim == 4 else images[:, None]
    with LmdbWriter(path, overwrite=overwrite) as db:
        for i, (planes, label) in enumerate(zip(images, labels)):
            db.put(key_format % (first_key + i), make_datum(planes, int(label)))
    return db.count


def convert_mnist(image_file, label_file, db_path, overwrite: bool = False) -> int:
    """convert_mnist_data: Datum 1 x rows x cols uint8 + label, keys %08d in file order."""
    images = datasets.read_idx(image_file, datasets.IDX_IMAGES_MAGIC)
    labels = datasets.read_idx(label_file, datasets.IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"'{image_file}' has {len(images)} items but '{label_file}' has {len(labels)}")
    log.info("A total of %d items.", len(images))
    log.info("Rows: %d Cols: %d", images.shape[1], images.shape[2])
    count = write_images(db_path, images, labels, "%08d", overwrite=overwrite)
    log.info("Processed %d files.", count)
    return count


def convert_cifar(input_folder, output_folder, overwrite: bool = False) -> dict[str, int]:
    """convert_cifar_data: cifar10_train_lmdb from whichever data_batch_k.bin exist (keys %05d of
    (k - 1) * 10000 + i, as Caffe numbers them) and cifar10_test_lmdb from test_batch.bin; Datum 3x32x32 R,G,B."""
    batches = datasets.cifar_batches(input_folder)
    if not batches["train"] or not batches["test"]:
        raise DataError(
            f"'{datasets.cifar_dir(input_folder)}' needs data_batch_*.bin and test_batch.bin "
            f"(found {len(batches['train'])} training batches, test batch: {bool(batches['test'])})"
        )
    counts = {}
    for split in ("train", "test"):
        path = Path(output_folder) / f"cifar10_{split}_lmdb"
        log.info("Writing %s data", "Training" if split == "train" else "Testing")
        with LmdbWriter(path, overwrite=overwrite) as db:
            for number, batch_file in batches[split]:
                images, labels = datasets.read_cifar_batch(batch_file)
                first = (number - 1) * CIFAR_BATCH if split == "train" else 0
                for i, (planes, label) in enumerate(zip(images, labels)):
                    db.put(f"{first + i:05d}", make_datum(planes, int(label)))
        counts[split] = db.count
    return counts


def compute_image_mean(db_path, output_file=None) -> np.ndarray:
    """compute_image_mean: the per-pixel mean of all records, summed in float32 in key order as Caffe does.

    Returns the mean (1, C, H, W) and writes it as a BlobProto to `output_file` if given.
    """
    reader = LmdbReader(db_path)
    total, shape = None, None
    for key, value in reader.read(reader.entries):
        planes = datum_array(parse_datum(value, key, db_path), key, db_path)
        if total is None:
            shape = planes.shape
            total = np.zeros(shape, dtype=np.float32)
        elif planes.shape != shape:
            raise DataError(
                f"record {key.decode(errors='replace')!r} of '{db_path}' is {list(planes.shape)}, "
                f"the first was {list(shape)}: incorrect data field size"
            )
        total += planes.astype(np.float32)
    reader.close()
    mean = (total / np.float32(reader.entries))[None]
    log.info("Processed %d files.", reader.entries)
    log.info("Number of channels: %d", shape[0])
    for c in range(shape[0]):
        # Caffe sums the mean image's values of a channel in float, in order.
        value = np.cumsum(mean[0, c].ravel(), dtype=np.float32)[-1] / np.float32(mean[0, c].size)
        log.info("mean_value channel [%d]: %s", c, f"{float(value):.6g}")
    if output_file is not None:
        # Caffe's tool fills the legacy num/channels/height/width fields, not `shape`.
        blob = caffe_pb2.BlobProto(num=1, channels=shape[0], height=shape[1], width=shape[2])
        blob.data.extend(mean.ravel().tolist())
        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(output_file).with_name(Path(output_file).name + ".partial")
        tmp.write_bytes(blob.SerializeToString())
        tmp.replace(output_file)
    return mean


def folder_list(folder) -> list[tuple[str, int]]:
    """An image folder as (relative path, label): class subfolders in sorted order get labels 0, 1, ...;
    images directly in the folder get label 0."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder '{folder}' does not exist")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    groups = [(label, sorted(c.rglob("*"))) for label, c in enumerate(classes)] or [(0, sorted(folder.iterdir()))]
    lines = [
        (str(p.relative_to(folder)), label)
        for label, files in groups
        for p in files
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    for label, c in enumerate(classes):
        log.info("Label %d: %s", label, c.name)
    if not lines:
        raise DataError(f"image folder '{folder}' holds no images")
    return lines


def convert_imageset(
    root_folder: str,
    lines: list[tuple[str, int]],
    db_path,
    *,
    gray: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    resize_height: int = 0,
    resize_width: int = 0,
    check_size: bool = False,
    encoded: bool = False,
    encode_type: str = "",
    overwrite: bool = False,
) -> int:
    """convert_imageset: one Datum per listed image, keys "%08d_<path>"; images that fail to load are skipped
    with an error logged (as Caffe). `encoded` stores the file as it is when no re-encoding is needed."""
    lines = list(lines)
    if shuffle:
        log.info("Shuffling data")
        lines = [lines[i] for i in np.random.default_rng(seed).permutation(len(lines))]
    log.info("A total of %d images.", len(lines))
    first_shape = None
    with LmdbWriter(db_path, overwrite=overwrite) as db:
        for line_id, (name, label) in enumerate(lines):
            path = root_folder + name
            try:
                planes = read_image(path, resize_height, resize_width, not gray)
            except DataError as exc:
                log.error("%s", exc)
                continue
            if check_size:
                if first_shape is None:
                    first_shape = planes.shape
                elif planes.shape != first_shape:
                    raise DataError(f"'{path}' is {list(planes.shape)}, the first image was {list(first_shape)}")
            if encoded:
                fmt = (encode_type or Path(name).suffix.lstrip(".")).lower()
                # As Caffe: a file already in the wanted format and size is stored as it is (even with --gray).
                as_is = not resize_height and not resize_width and _matches_ext(name, fmt)
                data = Path(path).read_bytes() if as_is else encode_image(planes, fmt)
                value = make_encoded_datum(data, label)
            else:
                value = make_datum(planes, label)
            db.put(f"{line_id:08d}_{name}", value)
            if (line_id + 1) % 1000 == 0:
                log.info("Processed %d files.", line_id + 1)
    log.info("Processed %d files.", db.count)
    return db.count


def _matches_ext(name: str, fmt: str) -> bool:
    ext = Path(name).suffix.lstrip(".").lower()
    return ext == fmt or (fmt == "jpg" and ext == "jpeg")


# ----- command lines ------------------------------------------------------------------------------------------
def _run(parser: argparse.ArgumentParser, body, argv) -> int:
    args = parser.parse_args(argv)
    setup_logging()
    try:
        body(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _check_backend(args) -> None:
    if args.backend.lower() != "lmdb":
        raise DataError(f"backend '{args.backend}' is not supported: only lmdb")


def main_convert_mnist(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert MNIST IDX files (gz or not) into an LMDB of Datum "
        "records (1x28x28 uint8, keys %%08d), as Caffe's convert_mnist_data."
    )
    parser.add_argument("input_image_file")
    parser.add_argument("input_label_file")
    parser.add_argument("output_db")
    parser.add_argument("--backend", default="lmdb", help="only lmdb")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing database")

    def body(args):
        _check_backend(args)
        convert_mnist(args.input_image_file, args.input_label_file, args.output_db, args.overwrite)

    return _run(parser, body, argv)


def main_convert_cifar(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert CIFAR-10 binary batches into cifar10_train_lmdb (the "
        "data_batch_*.bin present) and cifar10_test_lmdb (test_batch.bin), 3x32x32."
    )
    parser.add_argument("input_folder", help="folder with the .bin files (or its parent)")
    parser.add_argument("output_folder")
    parser.add_argument("--backend", default="lmdb", help="only lmdb")
    parser.add_argument("--overwrite", action="store_true", help="replace existing databases")

    def body(args):
        _check_backend(args)
        counts = convert_cifar(args.input_folder, args.output_folder, args.overwrite)
        log.info("Wrote %d training and %d test records", counts["train"], counts["test"])

    return _run(parser, body, argv)


def main_compute_image_mean(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Compute the mean image of an LMDB of Datum records and write "
        "it as a BlobProto (.binaryproto), as Caffe's compute_image_mean."
    )
    parser.add_argument("input_db")
    parser.add_argument("output_file", nargs="?")
    parser.add_argument("--backend", default="lmdb", help="only lmdb")

    def body(args):
        _check_backend(args)
        compute_image_mean(args.input_db, args.output_file)

    return _run(parser, body, argv)


def main_convert_imageset(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert images into an LMDB of Datum records, as Caffe's convert_imageset. Either "
        "ROOTFOLDER LISTFILE DB_NAME (LISTFILE lines are 'path label', paths relative to ROOTFOLDER, which is "
        "prefixed as given: end it with /), or IMAGE_FOLDER DB_NAME (class subfolders in sorted order get labels "
        "0, 1, ...)."
    )
    parser.add_argument("paths", nargs="+", metavar="ROOTFOLDER LISTFILE DB_NAME | IMAGE_FOLDER DB_NAME")
    parser.add_argument("--gray", action="store_true", help="decode images as greyscale")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the order of images")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle")
    parser.add_argument("--resize_height", type=int, default=0)
    parser.add_argument("--resize_width", type=int, default=0)
    parser.add_argument("--check_size", action="store_true", help="check that all images have the same size")
    parser.add_argument("--encoded", action="store_true", help="store encoded images (PNG/JPEG bytes)")
    parser.add_argument("--encode_type", default="", help="format of --encoded images ('png', 'jpg', ...)")
    parser.add_argument("--backend", default="lmdb", help="only lmdb")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing database")

    def body(args):
        _check_backend(args)
        if len(args.paths) == 3:
            root, list_file, db = args.paths
            lines = read_list_file(list_file)
        elif len(args.paths) == 2:
            folder, db = args.paths
            root, lines = str(Path(folder)) + "/", folder_list(folder)
        else:
            parser.error("give ROOTFOLDER LISTFILE DB_NAME or IMAGE_FOLDER DB_NAME")
        convert_imageset(
            root,
            lines,
            db,
            gray=args.gray,
            shuffle=args.shuffle,
            seed=args.seed,
            resize_height=args.resize_height,
            resize_width=args.resize_width,
            check_size=args.check_size,
            encoded=args.encoded,
            encode_type=args.encode_type,
            overwrite=args.overwrite,
        )

    return _run(parser, body, argv)
