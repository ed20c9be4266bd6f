"""The tuning database: store.py (TuningDB: the SQLite file, its queries, its JSON export),
checks.py (its check markers: which candidate each tuning process is checking) and records.py
(the records it holds, each checked by its type's from_record)."""
from .records import MAX_TEXT, STATUSES, Measurement, TuningDBError, Winner
from .store import EXPORT_FORMAT, SCHEMA_VERSION, TuningDB, open_default

__all__ = ["EXPORT_FORMAT", "MAX_TEXT", "SCHEMA_VERSION", "STATUSES", "Measurement", "TuningDB",
           "TuningDBError", "Winner", "open_default"]
