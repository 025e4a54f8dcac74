"""The text path: a Jinja template rendered to prototxt text, parsed to a NetParameter (V0/V1 files upgraded),
composed and filtered (phase/level/stage, Split insertion) before a net is built; `file:line` of each layer.

Imports only the package root (errors, fileio, glog, registry) and pipeline.proto.
"""
