"""InfogainLoss: SoftmaxWithLoss with every label's log-likelihood weighted by a row of an infogain matrix H.

loss = -sum over counted positions of sum_k H[label, k] * log(max(softmax(x)_k, 1e-20)) / normalizer.
This Caffe master takes scores and applies the softmax itself (Caffe 1.0 took probabilities) along
`infogain_loss_param.axis`. H (C x C) is the third bottom, or read from the `infogain_loss_param.source`
binaryproto. Caffe's gradient is (p * sum_k H[label, k] - H[label]) / normalizer; label and H get none.
loss_param: ignore_label and normalization (default VALID); the deprecated `normalize` is refused, as Caffe does.
An optional second top holds the probabilities (no gradient flows back from it, as in Caffe).
"""

from pathlib import Path

import torch
from google.protobuf.message import DecodeError

from pipeline.net.layers.base import Layer, canonical_axis, count
from pipeline.net.layers.loss_common import (
    LOG_THRESHOLD,
    check_label_count,
    check_same_first_dim,
    class_labels,
    ignore_label,
    normalization_mode,
)
from pipeline.net.layers.registry import register
from pipeline.net.layers.softmax_loss import softmax_target_tops
from pipeline.proto import caffe_pb2
from pipeline.weights.blobs import blob_to_array


@register("InfogainLoss")
class InfogainLoss(Layer):
    num_bottoms = (2, 3)
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        scores, labels = bottom_shapes[:2]
        check_same_first_dim(self, bottom_shapes)
        p = self.param.infogain_loss_param
        self.check(
            not self.param.loss_param.HasField("normalize"),
            "loss_param.normalize is deprecated for InfogainLoss: use loss_param.normalization",
        )
        self.axis = canonical_axis(self, p.axis, len(scores))
        check_label_count(self, scores, labels, self.axis)
        self.ignore_label = ignore_label(self)
        self.normalization = normalization_mode(self)
        num_classes = scores[self.axis]
        if len(bottom_shapes) == 3:
            h_shape = bottom_shapes[2]
            self.check(
                count(h_shape) == num_classes * num_classes,
                f"infogain bottom '{self.bottom_names[2]}' {list(h_shape)} must hold {num_classes}x{num_classes} "
                f"values for the {num_classes} classes of bottom '{self.bottom_names[0]}' {list(scores)}",
            )
            self.infogain = None
        else:
            self.check(bool(p.source), "infogain_loss_param.source must name the H matrix (or give H as third bottom)")
            matrix = self._read_matrix(p.source)
            self.check(
                matrix.numel() == num_classes * num_classes,
                f"infogain matrix '{p.source}' {list(matrix.shape)} must hold {num_classes}x{num_classes} "
                f"values for the {num_classes} classes of bottom '{self.bottom_names[0]}' {list(scores)}",
            )
            # Not a Caffe blob (never saved in a caffemodel), but it follows the net's dtype and device.
            self.register_buffer("infogain", matrix.reshape(num_classes, num_classes), persistent=False)
        return [()] + [tuple(scores)] * (len(self.top_names) - 1)

    def _read_matrix(self, path: str) -> torch.Tensor:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise self.error(f"cannot read infogain matrix '{path}': {exc.strerror or exc}") from None
        blob = caffe_pb2.BlobProto()
        try:
            blob.ParseFromString(data)
            return torch.from_numpy(blob_to_array(blob))
        except (DecodeError, ValueError) as exc:
            raise self.error(f"infogain matrix '{path}' is not a valid BlobProto binaryproto: {exc}") from None

    def forward(self, scores, labels, infogain=None):
        num_classes = scores.shape[self.axis]
        outer, inner = check_label_count(self, tuple(scores.shape), tuple(labels.shape), self.axis)
        lab, valid = class_labels(self, labels, num_classes, self.ignore_label)
        matrix = (self.infogain if infogain is None else infogain).detach()
        matrix = matrix.reshape(num_classes, num_classes).to(scores.dtype)
        # Row H[label] for every position, laid out like the scores (outer, C, inner); zero where ignored.
        rows = (matrix[lab] * valid.unsqueeze(1).to(scores.dtype)).view(outer, inner, num_classes).transpose(1, 2)
        x = scores.reshape(outer, num_classes, inner)
        return softmax_target_tops(self, scores, x, rows, valid, outer, inner, LOG_THRESHOLD)

    def extra_repr(self):
        return f"{super().extra_repr()}, axis={self.axis}, ignore_label={self.ignore_label}"
