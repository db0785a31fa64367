"""Measuring: timing with warm-up, rotation and per-run samples; records; results files.

    from spruce.bench import make_inputs, measure, ResultsWriter
    xs = make_inputs((64, 768))
    with ResultsWriter("runs/x") as out:
        out.append(measure("bert-base-ffn", layer, xs, device="cpu", dtype="fp32"))
"""

from .env import ENV_KEYS, device_name, environment
from .records import (
    KINDS,
    MEASURE_ERRORS,
    RECORD_FIELDS,
    Record,
    ResultsWriter,
    describe_error,
    dtype_name,
    measure,
)
from .schema import RESULTS_SCHEMA, validate
from .timing import Timing, last_level_cache_bytes, make_inputs, rotation_size, time_fn

__all__ = ["ENV_KEYS", "KINDS", "MEASURE_ERRORS", "RECORD_FIELDS", "RESULTS_SCHEMA", "Record",
           "ResultsWriter", "Timing", "describe_error", "device_name", "dtype_name",
           "environment", "last_level_cache_bytes", "make_inputs", "measure",
           "rotation_size", "time_fn", "validate"]
