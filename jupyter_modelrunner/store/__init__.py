"""The local model store: content-addressed blobs, manifests, an index of tags, and runnable bundles.

Layout (Docker Model Runner's, see FORMAT.md §3)::

    blobs/sha256/<hex>                 immutable, read-only; `<hex>.incomplete` while downloading
    manifests/sha256/<hex>             the exact manifest bytes (their sha256 is the model id)
    bundles/sha256/<hex>/model/...     what an engine opens: hard links to the blobs, no copies
    models.json                        {"models": [{"id", "tags", "files"}]}

The Jupyter server, kernels and the CLI may use one store at the same time: every index change happens
under a file lock and is written atomically, downloads take a per-blob lock (so a `<hex>.incomplete` whose
lock nobody holds belongs to no download in progress), every pull and package holds the store's `adding`
lock shared while it counts on blobs being present, and bundles are built in a private folder and renamed
into place.

One module a job; `Store` is the layers stacked:

- `blobs`: the folders, blobs, and the locks (per blob, `adding`);
- `index`: the tag index, `models.json`; `names`: which model a name means, and how a tag is shown;
- `bundles`: the folder an engine opens; `tar_layers`: unpacking a tar layer into it, safely and boundedly;
- `usage`: `df` and `gc`;
- `models`: `Store` and `Model`, the operations on whole models;
- `fsck` (check), `repair`, `findings` (what they report): not imported here, only `fsck` needs them.
"""

from .blobs import ADDING_LOCK, COPY_CHUNK_BYTES
from .bundles import bundle_plan
from .index import INDEX_FILE
from .models import Model, RemoveResult, Store
from .names import SHORT_ID_LENGTH, familiar_name
from .tar_layers import TAR_EXPANSION_LIMIT, TAR_UNPACK_FLOOR_BYTES, tar_unpack_cap
from .usage import DiskUsage

__all__ = [
    "ADDING_LOCK", "COPY_CHUNK_BYTES", "INDEX_FILE", "SHORT_ID_LENGTH", "TAR_EXPANSION_LIMIT", "TAR_UNPACK_FLOOR_BYTES",
    "DiskUsage", "Model", "RemoveResult", "Store", "bundle_plan", "familiar_name", "tar_unpack_cap",
]
