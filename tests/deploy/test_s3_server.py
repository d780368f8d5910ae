"""The S3 server of the tests and CI (SeaweedFS, `deploy/local/common.sh ensure_seaweedfs`) behaves as S3 does for
what an object-store result store needs, through s3fs and fsspec's URL interface: large objects byte for byte
(multipart uploads too), listings, overwrites, deletes, and credentials that are checked."""

import os

import fsspec
import pytest

from tests.conftest import S3Server

MB = 1024 * 1024


def _options(s3: S3Server) -> dict[str, object]:
    """fsspec's storage options for the server, as a result store given an ``s3://`` URL would pass them."""
    return {"key": s3.key, "secret": s3.secret, "client_kwargs": {"endpoint_url": s3.endpoint_url}}


def test_a_5_mb_object_reads_back_identically(s3: S3Server, s3_bucket: str) -> None:
    data = os.urandom(5 * MB)
    url = f"s3://{s3_bucket}/results/part-0.jsonl"
    with fsspec.open(url, "wb", **_options(s3)) as f:
        f.write(data)
    with fsspec.open(url, "rb", **_options(s3)) as f:
        assert f.read() == data
    fs = s3.filesystem()
    fs.invalidate_cache()
    assert fs.size(url) == len(data)
    assert fs.cat_file(url, start=MB, end=MB + 16) == data[MB : MB + 16]  # a ranged read


def test_a_multipart_upload_reads_back_identically(s3: S3Server, s3_bucket: str) -> None:
    data = os.urandom(11 * MB)  # three parts of at most 5 MiB, S3's smallest part size
    path = f"{s3_bucket}/big.bin"
    fs = s3.filesystem()
    with fs.open(path, "wb", block_size=5 * MB) as f:
        for start in range(0, len(data), MB):
            f.write(data[start : start + MB])
    assert fs.cat_file(path) == data


def test_ls_lists_the_objects_and_prefixes(s3: S3Server, s3_bucket: str) -> None:
    fs = s3.filesystem()
    fs.pipe({f"{s3_bucket}/a.jsonl": b"a\n", f"{s3_bucket}/b.jsonl": b"bb\n", f"{s3_bucket}/job/c.jsonl": b"c\n"})
    fs.invalidate_cache()  # listings from the server, not from s3fs's cache
    assert sorted(fs.ls(s3_bucket, detail=False)) == [f"{s3_bucket}/{n}" for n in ("a.jsonl", "b.jsonl", "job")]
    sizes = {entry["name"]: entry["size"] for entry in fs.ls(s3_bucket, detail=True) if entry["type"] == "file"}
    assert sizes == {f"{s3_bucket}/a.jsonl": 2, f"{s3_bucket}/b.jsonl": 3}
    assert fs.ls(f"{s3_bucket}/job", detail=False) == [f"{s3_bucket}/job/c.jsonl"]
    fs.invalidate_cache()
    assert fs.find(s3_bucket) == [f"{s3_bucket}/{n}" for n in ("a.jsonl", "b.jsonl", "job/c.jsonl")]


def test_an_overwrite_replaces_the_whole_object(s3: S3Server, s3_bucket: str) -> None:
    path = f"{s3_bucket}/status.json"
    fs = s3.filesystem()
    fs.pipe_file(path, b'{"status": "in_progress", "padding": "' + b"x" * 1000 + b'"}')
    fs.pipe_file(path, b'{"status": "completed"}')
    fs.invalidate_cache()
    assert fs.cat_file(path) == b'{"status": "completed"}'
    assert fs.size(path) == len(b'{"status": "completed"}')


def test_a_deleted_object_no_longer_exists(s3: S3Server, s3_bucket: str) -> None:
    path = f"{s3_bucket}/gone.jsonl"
    fs = s3.filesystem()
    fs.pipe_file(path, b"line\n")
    assert fs.exists(path)
    fs.rm(path)
    assert not fs.exists(path)
    fs.invalidate_cache()
    assert not fs.exists(path)
    assert fs.ls(s3_bucket, detail=False) == []
    with pytest.raises(FileNotFoundError):
        fs.cat_file(path)


def test_a_wrong_secret_is_refused(s3: S3Server, s3_bucket: str) -> None:
    fs = s3.filesystem()
    fs.pipe_file(f"{s3_bucket}/kept.jsonl", b"kept\n")
    intruder = s3.filesystem(secret=s3.secret + "-wrong")
    with pytest.raises(PermissionError):
        intruder.ls(s3_bucket)
    with pytest.raises(PermissionError):
        intruder.cat_file(f"{s3_bucket}/kept.jsonl")
    with pytest.raises(PermissionError):
        intruder.pipe_file(f"{s3_bucket}/planted.jsonl", b"x\n")
    fs.invalidate_cache()
    assert fs.ls(s3_bucket, detail=False) == [f"{s3_bucket}/kept.jsonl"]
