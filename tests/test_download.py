"""Verified downloads through a real HTTP server on 127.0.0.1: verification, retries, cache, offline mode."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pooch
import pytest
import xxhash

from helpers.http_server import FileServer
from tilesam.download import (
    RETRIES,
    ChecksumError,
    DownloadError,
    OfflineError,
    cache_dir,
    fetch_verified,
    file_hash,
    file_sha256,
    hashed_in_process,
    rehash,
    verify_fresh,
)

GOOD = b"the expected file " * 500
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
WHAT = "test file"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TILESAM_CACHEDIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TILESAM_OFFLINE", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    srv.routes["/files/test.bin"] = (200, GOOD)
    yield srv
    srv.close()


@pytest.fixture
def target(tmp_path, cache) -> Path:
    return tmp_path / "downloads" / "test.bin"


def fetch(server: FileServer, target: Path, **kwargs) -> Path:
    return fetch_verified(server.url("/files/test.bin"), target, GOOD_SHA, what=WHAT, progress=False, **kwargs)


@pytest.fixture
def no_retry_wait(monkeypatch) -> list[float]:
    """pooch waits 1 s, 2 s, 3 s between retries; record the waits instead."""
    import pooch.core

    waits: list[float] = []
    monkeypatch.setattr(pooch.core.time, "sleep", waits.append)
    return waits


@pytest.fixture
def no_network(monkeypatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("offline mode opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_cache_dir_follows_environment(cache):
    assert cache_dir() == cache


def test_download_is_verified_cached_and_reused(server, target):
    assert fetch(server, target) == target and target.read_bytes() == GOOD
    assert server.requests == ["/files/test.bin"]
    assert fetch(server, target) == target
    assert len(server.requests) == 1  # the second fetch made no request
    assert list(target.parent.iterdir()) == [target]  # no partial files left behind


def test_corrupt_download_is_rejected_and_removed(server, target):
    bad = b"another file " * 500
    server.routes["/files/test.bin"] = (200, bad)
    with pytest.raises(ChecksumError) as info:
        fetch(server, target)
    message = str(info.value)
    for part in (WHAT, server.url("/files/test.bin"), GOOD_SHA, hashlib.sha256(bad).hexdigest(), "deleted"):
        assert part in message
    assert len(server.requests) == 1  # a wrong file is not a network failure: no retries
    assert not target.parent.exists() or list(target.parent.iterdir()) == []


def test_server_errors_are_retried_then_fail_clearly(server, target, no_retry_wait):
    server.routes["/files/test.bin"] = (500, b"internal error")
    with pytest.raises(DownloadError, match=f"could not download {WHAT} from {server.url('/files/test.bin')}") as info:
        fetch(server, target)
    assert "500" in str(info.value)
    assert len(server.requests) == 1 + RETRIES
    assert len(no_retry_wait) == RETRIES
    assert not target.exists()


def test_a_corrupted_cache_entry_is_downloaded_again(server, target):
    target.parent.mkdir(parents=True)
    target.write_bytes(GOOD[: len(GOOD) // 2])
    assert fetch(server, target).read_bytes() == GOOD
    assert len(server.requests) == 1


def test_a_given_source_is_downloaded_instead_of_the_url(server, target):
    server.routes["/mirror/test.bin"] = (200, GOOD)
    assert fetch(server, target, source=server.url("/mirror/test.bin")).read_bytes() == GOOD
    assert server.requests == ["/mirror/test.bin"]


@pytest.mark.parametrize("via_env", [True, False])
def test_offline_missing_file_names_path_and_source(server, target, no_network, monkeypatch, via_env):
    if via_env:
        monkeypatch.setenv("TILESAM_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        fetch(server, target, offline=None if via_env else True, hint="; or ask a colleague")
    message = str(info.value)
    assert str(target) in message and server.url("/files/test.bin") in message and "ask a colleague" in message
    assert server.requests == []


def test_offline_uses_the_verified_cache(server, target, no_network, monkeypatch):
    target.parent.mkdir(parents=True)
    target.write_bytes(GOOD)
    monkeypatch.setenv("TILESAM_OFFLINE", "1")
    assert fetch(server, target) == target
    target.write_bytes(GOOD.upper())  # same size, other content
    with pytest.raises(ChecksumError, match="offline mode"):
        fetch(server, target)
    assert target.exists() and server.requests == []


def test_checksum_record_skips_rehash_until_the_file_changes(tmp_path, cache, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    changed = hashlib.sha256(b"b" * 1001).hexdigest()
    calls = []
    real = pooch.file_hash
    monkeypatch.setattr(pooch, "file_hash", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert file_sha256(path) == first and calls == []  # remembered: not hashed again
    path.write_bytes(b"b" * 1001)
    assert file_sha256(path) == changed and calls == [1]
    assert file_sha256(path, remember=False) == changed and calls == [1, 1]


GOOD_XXH = "xxh128:" + xxhash.xxh3_128_hexdigest(GOOD)


def test_xxh128_checksums_are_verified(server, target):
    assert fetch_verified(server.url("/files/test.bin"), target, GOOD_XXH, what=WHAT, progress=False) == target
    assert target.read_bytes() == GOOD and hashed_in_process(target, GOOD_XXH)
    wrong = "xxh128:" + "0" * 32
    target.unlink()
    with pytest.raises(ChecksumError, match=f"xxh128 expected {'0' * 32}, actual {GOOD_XXH[7:]}"):
        fetch_verified(server.url("/files/test.bin"), target, wrong, what=WHAT, progress=False)
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize(
    "known, message",
    [("xxh128:abc", "32 hex digits"), ("crc32:" + "0" * 8, "unknown algorithm 'crc32'"), ("0" * 63, "64 hex")],
)
def test_malformed_checksums_fail_before_any_download(server, target, known, message):
    with pytest.raises(ValueError, match=message):
        fetch_verified(server.url("/files/test.bin"), target, known, what=WHAT, progress=False)
    assert server.requests == []


def test_verify_fresh_ignores_the_remembered_record(tmp_path, cache):
    """A same-size swap that keeps the mtime fools the size/mtime record, never verify_fresh."""
    import os

    path = tmp_path / "model.pth"
    path.write_bytes(GOOD)
    assert file_sha256(path) == GOOD_SHA  # remembered
    stat = path.stat()
    path.write_bytes(GOOD.upper())  # same size, other content
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(path) == GOOD_SHA  # the record is fooled ...
    with pytest.raises(ChecksumError, match=f"{path} has sha256 .* expected {GOOD_SHA}"):
        verify_fresh(path, GOOD_SHA, what="test model")  # ... the fresh hash is not
    path.write_bytes(GOOD)
    assert verify_fresh(path, GOOD_XXH, what="test model") == path


def test_a_hash_this_process_made_is_reused_until_the_file_is_touched(tmp_path, cache, monkeypatch):
    """A load right after a check costs no second hash; any write (new ctime) makes it hash again."""
    import os

    path = tmp_path / "model.pth"
    path.write_bytes(GOOD)
    assert file_hash(path, "xxh128", remember=False) == GOOD_XXH[7:]
    calls = []
    real = pooch.file_hash
    monkeypatch.setattr(pooch, "file_hash", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert file_hash(path, "xxh128") == GOOD_XXH[7:] and calls == []
    stat = path.stat()
    path.write_bytes(GOOD.upper())  # same size, mtime put back: only the ctime tells
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_hash(path, "xxh128") == xxhash.xxh3_128_hexdigest(GOOD.upper()) and calls == [1]


def test_rehash_never_takes_a_remembered_value_and_remembers_its_own(tmp_path, cache, monkeypatch):
    import os

    from tilesam import download

    path = tmp_path / "model.pth"
    path.write_bytes(GOOD)
    assert file_sha256(path) == GOOD_SHA  # remembered by size and mtime
    stat = path.stat()
    path.write_bytes(GOOD.upper())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    swapped = hashlib.sha256(GOOD.upper()).hexdigest()
    assert rehash(path) == swapped
    monkeypatch.setattr(download, "_IN_PROCESS", {})  # another process: only the cache's record is left
    assert file_sha256(path) == swapped  # what rehash remembered, not the stale record
