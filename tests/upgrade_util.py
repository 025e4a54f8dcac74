"""Shared pieces of the upgrade tests: small V1 and V0 nets with the V2 nets Caffe upgrades them to, and how two
nets are compared."""

from google.protobuf import text_format

from pipeline.proto import caffe_pb2


def parse(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def assert_same_net(ours: caffe_pb2.NetParameter, expected: caffe_pb2.NetParameter) -> None:
    assert text_format.MessageToString(ours) == text_format.MessageToString(expected)
    assert ours == expected


V1_FEATURES = """
name: "v1"
layers { name: "data" type: DATA top: "data" top: "label"
  data_param { source: "db" batch_size: 10 scale: 0.5 mean_file: "m.binaryproto" crop_size: 7 mirror: true }
  include { phase: TRAIN } }
layers { name: "img" type: IMAGE_DATA top: "img" top: "img_label"
  image_data_param { source: "list.txt" scale: 2 mirror: false new_height: 9 }
  transform_param { mean_value: 3 }
  exclude { stage: "deploy" } }
layers { name: "win" type: WINDOW_DATA top: "win" top: "win_label" window_data_param { source: "w" crop_size: 5 } }
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" param: "shared_w" param: "shared_b"
  blob_share_mode: PERMISSIVE blob_share_mode: STRICT blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 3 kernel_size: 3 } }
layers { name: "conv_b" type: CONVOLUTION bottom: "data" top: "conv_b" param: "shared_w" blobs_lr: 0.5
  convolution_param { num_output: 3 kernel_size: 3 } }
layers { name: "loss" type: EUCLIDEAN_LOSS bottom: "conv" bottom: "conv_b" top: "loss" loss_weight: 0.25 }
layers { name: "sig" type: SIGMOID_CROSS_ENTROPY_LOSS bottom: "conv" bottom: "conv_b" loss_param { ignore_label: 2 } }
"""

V1_FEATURES_UPGRADED = """
name: "v1"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.5 mirror: true crop_size: 7 mean_file: "m.binaryproto" }
  data_param { source: "db" batch_size: 10 } }
layer { name: "img" type: "ImageData" top: "img" top: "img_label" exclude { stage: "deploy" }
  transform_param { scale: 2 mirror: false mean_value: 3 }
  image_data_param { source: "list.txt" new_height: 9 } }
layer { name: "win" type: "WindowData" top: "win" top: "win_label" transform_param { crop_size: 5 }
  window_data_param { source: "w" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { name: "shared_w" share_mode: PERMISSIVE lr_mult: 1 decay_mult: 1 }
  param { name: "shared_b" share_mode: STRICT lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "conv_b" type: "Convolution" bottom: "data" top: "conv_b" param { name: "shared_w" lr_mult: 0.5 }
  convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "conv" bottom: "conv_b" top: "loss" loss_weight: 0.25 }
layer { name: "sig" type: "SigmoidCrossEntropyLoss" bottom: "conv" bottom: "conv_b" loss_param { ignore_label: 2 } }
"""


V0_DEPLOY = """
name: "TinyV0"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 1 group: 1 biasterm: true
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 }
    blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 } bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 }
  bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 5 biasterm: false weight_filler { type: "xavier" } }
  bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""

V0_DEPLOY_UPGRADED = """
name: "TinyV0"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 bias_term: true pad: 1 kernel_size: 3 group: 1 stride: 1
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
  inner_product_param { num_output: 5 bias_term: false weight_filler { type: "xavier" } } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

V0_DATA = """
name: "V0Data"
force_backward: true
layers { layer { name: "data" type: "data" source: "train_db" meanfile: "mean.binaryproto" batchsize: 32
    cropsize: 24 mirror: true scale: 0.5 rand_skip: 10 } top: "data" top: "label" }
layers { layer { name: "images" type: "images" source: "list.txt" batchsize: 4 shuffle_images: true new_height: 32
    new_width: 30 rand_skip: 1 } top: "img" top: "img_label" }
layers { layer { name: "win" type: "window_data" source: "windows.txt" batchsize: 8 det_fg_threshold: 0.6
    det_bg_threshold: 0.4 det_fg_fraction: 0.3 det_context_pad: 16 det_crop_mode: "square" } top: "w" top: "wl" }
layers { layer { name: "h5" type: "hdf5_data" source: "h5.txt" batchsize: 16 } top: "h" top: "hl" }
layers { layer { name: "cat" type: "concat" concat_dim: 0 } bottom: "data" bottom: "img" top: "cat" }
layers { layer { name: "pad" type: "padding" pad: 2 } bottom: "cat" top: "padded" }
layers { layer { name: "pool" type: "pool" pool: MAX kernelsize: 3 stride: 2 } bottom: "padded" top: "pool" }
layers { layer { name: "flat" type: "flatten" } bottom: "pool" top: "flat" }
layers { layer { name: "loss" type: "infogain_loss" source: "H.binaryproto" } bottom: "flat" bottom: "label" }
layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "out.h5" } }
  bottom: "flat" bottom: "label" }
"""

V0_DATA_UPGRADED = """
name: "V0Data"
force_backward: true
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.5 mirror: true crop_size: 24 mean_file: "mean.binaryproto" }
  data_param { source: "train_db" batch_size: 32 rand_skip: 10 } }
layer { name: "images" type: "ImageData" top: "img" top: "img_label"
  image_data_param { source: "list.txt" batch_size: 4 rand_skip: 1 shuffle: true new_height: 32 new_width: 30 } }
layer { name: "win" type: "WindowData" top: "w" top: "wl"
  window_data_param { source: "windows.txt" batch_size: 8 fg_threshold: 0.6 bg_threshold: 0.4 fg_fraction: 0.3
    context_pad: 16 crop_mode: "square" } }
layer { name: "h5" type: "HDF5Data" top: "h" top: "hl" hdf5_data_param { source: "h5.txt" batch_size: 16 } }
layer { name: "cat" type: "Concat" bottom: "data" bottom: "img" top: "cat" concat_param { concat_dim: 0 } }
layer { name: "pool" type: "Pooling" bottom: "cat" top: "pool"
  pooling_param { pool: MAX pad: 2 kernel_size: 3 stride: 2 } }
layer { name: "flat" type: "Flatten" bottom: "pool" top: "flat" }
layer { name: "loss" type: "InfogainLoss" bottom: "flat" bottom: "label"
  infogain_loss_param { source: "H.binaryproto" } }
layer { name: "out" type: "HDF5Output" bottom: "flat" bottom: "label" hdf5_output_param { file_name: "out.h5" } }
"""
