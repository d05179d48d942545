"""OpenAI's Batch API, served by the runner: files and batches kept in the store, and the executor that runs them.

`files.py` keeps the Files API's files, `records.py` the batches and their output, `validation.py` checks an input
file, `executor.py` runs batches through the one inference path as background work. No web framework here: the
routes are in api/batches.py.
"""

from .executor import BatchExecutor
from .files import DEFAULT_MAX_FILE_BYTES, PURPOSE_BATCH, FileRecord, FileStore
from .records import Batch, BatchStore
from .validation import ENDPOINTS, MAX_LINES

__all__ = ["DEFAULT_MAX_FILE_BYTES", "ENDPOINTS", "MAX_LINES", "PURPOSE_BATCH", "Batch", "BatchExecutor", "BatchStore",
           "FileRecord", "FileStore"]
