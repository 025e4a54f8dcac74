"""Weight files: .caffemodel (streamed protobuf), .binaryproto blobs, HDF5, safetensors and npz, their
detection, reading into a net and writing from it (`io`), `--weights-map` renaming, and the V0/V1 upgrade tools.

Imports the package root, pipeline.proto and pipeline.text (old caffemodels are upgraded on read); never a
net, solver or the command line: it works on NetParameters, arrays and any object with the net's accessors.
"""
