"""Where Cascade keeps files: the uploads (``CASCADE_FILES_DIR``) and the result store (``CASCADE_RESULTS_URL``) are
each a folder or any fsspec URL. An S3-compatible object store (``s3://bucket/prefix``) takes its endpoint and
credentials from the ``CASCADE_S3_*`` settings; empty, s3fs uses the usual AWS chain (environment, profile, role).
"""

from typing import TYPE_CHECKING

import fsspec

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from cascade.broker.settings import Settings


def options(settings: "Settings", url: str) -> dict[str, object]:
    """fsspec's storage options for ``url`` from the settings."""
    if url.startswith(("s3://", "s3a://")):
        found: dict[str, object] = {}
        if settings.s3_endpoint_url:
            found["client_kwargs"] = {"endpoint_url": settings.s3_endpoint_url}
        if settings.s3_access_key_id:
            found["key"] = settings.s3_access_key_id
            found["secret"] = settings.s3_secret_access_key.get_secret_value()
        return found
    if "://" not in url or url.startswith("file://"):
        return {"auto_mkdir": True}  # a folder's subfolders are made by their first file
    return {}


def filesystem(url: str, storage_options: dict[str, object] | None = None) -> tuple["AbstractFileSystem", str]:
    """The filesystem of ``url`` and the path in it (a local folder is made by its first file)."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, str(root).rstrip("/")


def is_local(fs: "AbstractFileSystem") -> bool:
    return "file" in fs.protocol
