"""Data: formats, detection, validation, templating, loss masks, packing, splits, stats.

from slmkit.data import load_records
result = load_records(["train.jsonl"])
result.raise_for_errors()
"""

from slmkit.data.loader import FORMAT_CHOICES, load_records
from slmkit.data.records import FORMATS, DataLoadResult, Problem, Record

__all__ = ["FORMATS", "FORMAT_CHOICES", "DataLoadResult", "Problem", "Record", "load_records"]
