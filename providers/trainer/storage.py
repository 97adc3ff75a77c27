"""The artifacts folder: a local path every worker sees (NFS, a shared
disk) or an fsspec URI (s3://, gs://, ...). Local paths need nothing
beyond the standard library; a URI needs fsspec and its backend."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def _fs(uri: str):
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def exists(uri: str) -> bool:
    if is_remote(uri):
        fs, path = _fs(uri)
        return fs.exists(path)
    return local(uri).exists()


def size(uri: str) -> int:
    if is_remote(uri):
        fs, path = _fs(uri)
        return int(fs.size(path))
    return local(uri).stat().st_size


def read_bytes(uri: str) -> bytes:
    if is_remote(uri):
        fs, path = _fs(uri)
        with fs.open(path, "rb") as f:
            return f.read()
    return local(uri).read_bytes()


def write_bytes(uri: str, data: bytes) -> None:
    """Whole or not at all: a temporary file renamed into place (a remote
    store's put is atomic per object)."""
    if is_remote(uri):
        fs, path = _fs(uri)
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    target = local(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_in(source: Path, uri: str) -> None:
    """A local file into the artifacts folder, atomically."""
    if is_remote(uri):
        fs, path = _fs(uri)
        fs.put_file(str(source), path)
        return
    target = local(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch(uri: str, workdir: Path) -> Path:
    """A local path for `uri`: itself when local, else a copy under workdir."""
    if not is_remote(uri):
        return local(uri)
    fs, path = _fs(uri)
    target = workdir / Path(path).name
    if fs.isdir(path):
        fs.get(path, str(target), recursive=True)
    else:
        fs.get_file(path, str(target))
    return target


def put_tree(source: Path, uri: str) -> None:
    if is_remote(uri):
        fs, path = _fs(uri)
        fs.put(str(source), path, recursive=True)
        return
    target = local(uri)
    if target.resolve() == source.resolve():
        return
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


def remove(uri: str) -> bool:
    """Delete a file or a folder and all under it; False if nothing was there."""
    if is_remote(uri):
        fs, path = _fs(uri)
        if not fs.exists(path):
            return False
        fs.rm(path, recursive=True)
        return True
    target = local(uri)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
        return True
    try:
        target.unlink()
    except FileNotFoundError:
        return False
    return True


def children(uri: str) -> list[str]:
    """The URIs right under a folder (none when it is not there)."""
    if is_remote(uri):
        fs, path = _fs(uri)
        if not fs.exists(path):
            return []
        protocol = uri.split("://", 1)[0]
        return sorted(f"{protocol}://{p}" for p in fs.ls(path, detail=False))
    folder = local(uri)
    return sorted(str(p) for p in folder.iterdir()) if folder.is_dir() else []
