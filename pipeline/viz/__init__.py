"""Seeing training: Caffe-format logs to tables (parse_log), curves (plot), net drawings (draw).

from pipeline.viz import parse_log
log = parse_log("caffe.log")          # log.train / log.test tables, log.warnings
"""

from pipeline.viz.logtable import Output, ParsedLog, Table
from pipeline.viz.parse_log import parse_lines, parse_log

__all__ = ["Output", "ParsedLog", "Table", "parse_lines", "parse_log"]
