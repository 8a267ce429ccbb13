"""`models fetch` against a local HTTP server (no network here): pinned addresses, checksums
checked before a file takes its place, interrupted transfers resumed with HTTP Range."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

from virnucpro.errors import VirnucproError
from virnucpro.models import download as dl
from virnucpro.models import files
from virnucpro.models.classifier import MLPClassifier, load_classifier
from virnucpro.models.demo import write_demo_esm2
from virnucpro.paths import checksum_sidecar


class Server:
    """Serves ``files`` (path -> bytes) with Range support; records every request's path and
    Range header. ``drop[path] = n``: the next response for ``path`` stops after n bytes of
    its body and closes the connection. ``ignore_range``: answers 200 with the whole file."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop: dict[str, int] = {}
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                server.requests.append((path, self.headers.get("Range")))
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                spec = self.headers.get("Range")
                if spec and not server.ignore_range:
                    start = int(spec.removeprefix("bytes=").partition("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if path in server.drop:
                    payload = payload[: server.drop.pop(path)]
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def demo_esm2(tmp_path_factory) -> bytes:
    """A tiny ESM-2 checkpoint in the real format (so that `models prepare` can follow)."""
    path = tmp_path_factory.mktemp("demo") / "esm2.pt"
    write_demo_esm2(path)
    return path.read_bytes()


@pytest.fixture
def published(server, monkeypatch, demo_esm2):
    """Small fake files at the pinned paths on the local server, and the pins set to them."""
    monkeypatch.setattr(dl, "RETRY_DELAY_SECONDS", 0.0)
    monkeypatch.setattr(dl, "BLOCK", 16384)  # several blocks per file: progress, drops
    data = {
        "esm2": demo_esm2,
        "config.json": b'{"hidden_size": 48}',
        "tokenizer.json": b'{"model": {}}',
        "pytorch_model.bin": b"dnabert weights" * 100,
    }
    for size in (300, 500):
        torch.manual_seed(size)
        buffer = io.BytesIO()
        torch.save(MLPClassifier(112).eval().state_dict(), buffer)
        data[size] = buffer.getvalue()
    esm_path = urlsplit(files.ESM2_URL).path
    server.files[esm_path] = data["esm2"]
    monkeypatch.setattr(files, "ESM2_SHA256", sha(data["esm2"]))
    monkeypatch.setattr(files, "ESM2_SIZE", len(data["esm2"]))
    pins = {}
    for name in files.DNABERT_FILES:
        server.files[urlsplit(files.DNABERT_URL + name).path] = data[name]
        pins[name] = (len(data[name]), sha(data[name]))
    monkeypatch.setattr(files, "DNABERT_PINS", pins)
    for size in (300, 500):
        server.files[urlsplit(files.CLASSIFIER_URL.format(size=size)).path] = data[size]
    monkeypatch.setattr(files, "CLASSIFIER_GIT_BLOBS", {s: blob_id(data[s]) for s in (300, 500)})
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)
    return data


def no_leftovers(directory: Path) -> None:
    assert not [p for p in directory.rglob("*") if p.name.endswith((".part", ".rejected"))]


def test_clean_fetch_checks_every_file_and_records_it(published, server, tmp_path):
    cache = tmp_path / "models"
    files.fetch_models(cache)
    paths = files.resolve_models(cache, chunk_size=300)
    assert paths.esm2.read_bytes() == published["esm2"]
    for name in files.DNABERT_FILES:
        assert (cache / "dnabert-s" / name).read_bytes() == published[name]
    assert set(load_classifier(paths.classifier).state_dict()) >= {"hidden_layer.weight"}
    no_leftovers(cache)
    # the pinned paths were asked for, under the mirror
    assert {path for path, _ in server.requests} == set(server.files)
    for path in server.files:
        if "DNABERT-S" in path:
            assert f"/resolve/{files.DNABERT_REVISION}/" in path
        if "VirNucPro" in path:
            assert f"/{files.CLASSIFIER_REVISION}/" in path
    # every file's sha256: in .fetch.json and in the sidecar `models prepare` reads
    manifest = json.loads((cache / files.FETCH_MANIFEST).read_text())["files"]
    assert manifest["esm2_t36_3B_UR50D.pt"]["sha256"] == sha(published["esm2"])
    assert manifest["esm2_t36_3B_UR50D.pt"]["url"] == files.ESM2_URL
    assert manifest["300_model.pth"]["git_blob_sha1"] == blob_id(published[300])
    assert manifest["300_model.pth"]["sha256"] == sha(published[300])
    assert manifest["dnabert-s/pytorch_model.bin"]["sha256"] == sha(published["pytorch_model.bin"])
    assert manifest["classifier_500.safetensors"]["converted_from"] == "500_model.pth"
    assert checksum_sidecar(paths.esm2).read_text().split()[-1] == sha(published["esm2"])

    # run.json's DNABERT-S sha256 follows from the pins alone (docs/models.md gives its value)
    listing = "".join(f"{n}\0{d}\n" for n, (_, d) in sorted(files.DNABERT_PINS.items()))
    assert files.sha256(cache / "dnabert-s") == sha(listing.encode())

    # a second fetch downloads nothing, checks what is there, and prepare_models follows
    server.requests.clear()
    files.fetch_models(cache)
    assert server.requests == []
    manifest = json.loads((cache / files.FETCH_MANIFEST).read_text())["files"]
    assert manifest["esm2_t36_3B_UR50D.pt"]["downloaded_from"].startswith(server.url)
    files.prepare_models(cache)


def test_checksum_mismatch_is_refused_and_nothing_takes_its_place(published, server, tmp_path):
    path = urlsplit(files.ESM2_URL).path
    server.files[path] = b"X" + published["esm2"][1:]  # same size, one byte changed
    cache = tmp_path / "models"
    with pytest.raises(VirnucproError) as error:
        files.fetch_models(cache)
    message = str(error.value)
    assert "\n" not in message
    assert "esm2_t36_3B_UR50D.pt: sha256 mismatch" in message
    assert f"expected {sha(published['esm2'])}" in message
    assert f"got {sha(server.files[path])}" in message
    assert not (cache / "esm2_t36_3B_UR50D.pt").exists()
    assert (cache / ".esm2_t36_3B_UR50D.pt.rejected").read_bytes() == server.files[path]
    assert not (cache / ".esm2_t36_3B_UR50D.pt.part").exists()


def test_classifier_git_blob_mismatch_is_refused(published, server, tmp_path):
    server.files[urlsplit(files.CLASSIFIER_URL.format(size=500)).path] = b"not the model"
    cache = tmp_path / "models"
    with pytest.raises(VirnucproError, match=r"500_model\.pth: git blob sha1 mismatch: expected"):
        files.fetch_models(cache)
    assert not (cache / "500_model.pth").exists()
    assert not (cache / "classifier_500.safetensors").exists()


def test_interrupted_transfer_resumes_from_the_partial_bytes(published, server, tmp_path):
    path = urlsplit(files.ESM2_URL).path
    server.drop[path] = 5000
    cache = tmp_path / "models"
    with pytest.raises(VirnucproError, match="download failed.*run 'virnucpro models fetch' again"):
        files.fetch_models(cache, attempts=1)
    part = cache / ".esm2_t36_3B_UR50D.pt.part"
    assert part.read_bytes() == published["esm2"][:5000]
    assert not (cache / "esm2_t36_3B_UR50D.pt").exists()

    server.requests.clear()
    files.fetch_models(cache)
    assert (path, "bytes=5000-") in server.requests
    assert (cache / "esm2_t36_3B_UR50D.pt").read_bytes() == published["esm2"]
    no_leftovers(cache)


def test_a_broken_transfer_is_retried_within_one_fetch(published, server, tmp_path):
    path = urlsplit(files.DNABERT_URL + "pytorch_model.bin").path
    server.drop[path] = 700
    cache = tmp_path / "models"
    files.fetch_models(cache)
    assert (path, "bytes=700-") in server.requests
    assert (cache / "dnabert-s" / "pytorch_model.bin").read_bytes() == published[
        "pytorch_model.bin"
    ]


def test_a_server_that_ignores_range_restarts_cleanly(published, server, tmp_path):
    path = urlsplit(files.ESM2_URL).path
    cache = tmp_path / "models"
    cache.mkdir()
    (cache / ".esm2_t36_3B_UR50D.pt.part").write_bytes(b"stale bytes from elsewhere")
    server.ignore_range = True
    files.fetch_models(cache)
    assert (path, "bytes=26-") in server.requests
    assert (cache / "esm2_t36_3B_UR50D.pt").read_bytes() == published["esm2"]


def test_a_complete_part_is_only_checked(published, server, tmp_path):
    cache = tmp_path / "models"
    cache.mkdir()
    (cache / ".esm2_t36_3B_UR50D.pt.part").write_bytes(published["esm2"])
    files.fetch_models(cache)
    assert urlsplit(files.ESM2_URL).path not in {p for p, _ in server.requests}
    assert (cache / "esm2_t36_3B_UR50D.pt").read_bytes() == published["esm2"]


def test_progress_is_logged(published, server, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(dl, "LOG_EVERY_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="virnucpro"):
        files.fetch_models(tmp_path / "models")
    lines = [r.getMessage() for r in caplog.records]
    size = dl.human(len(published["esm2"]))
    assert any(line.startswith(f"esm2_t36_3B_UR50D.pt: downloading {size}") for line in lines)
    assert any(f" of {size} (" in line and "/s" in line for line in lines)
    assert any(line.startswith("esm2_t36_3B_UR50D.pt: verified, sha256 ") for line in lines)


def test_a_file_already_there_must_match_its_pin(published, server, tmp_path):
    cache = tmp_path / "models"
    (cache / "dnabert-s").mkdir(parents=True)
    (cache / "dnabert-s" / "config.json").write_text("{}")
    with pytest.raises(VirnucproError, match=r"config\.json: sha256 mismatch: expected"):
        files.fetch_models(cache)


def test_only_https_without_a_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    with pytest.raises(VirnucproError, match="only https downloads"):
        dl.download("http://example.org/x", tmp_path / "x")
    assert dl.mirror_url(files.ESM2_URL, "http://127.0.0.1:1/m/") == (
        "http://127.0.0.1:1/m/fair-esm/models/esm2_t36_3B_UR50D.pt"
    )


def test_pins_are_full_length_and_revisions_fixed():
    assert files.DNABERT_REVISION in files.DNABERT_URL and "/main/" not in files.DNABERT_URL
    assert (
        files.CLASSIFIER_REVISION in files.CLASSIFIER_URL and "/main/" not in files.CLASSIFIER_URL
    )
    for remote in files.remotes():
        assert remote.url.startswith("https://")
        assert remote.sha256 or remote.git_sha1
        for value, length in ((remote.sha256, 64), (remote.git_sha1, 40)):
            assert value is None or (len(value) == length and int(value, 16) >= 0)


def test_redirects_must_stay_on_https():
    handler = dl._HttpsOnlyRedirects()
    request = urllib.request.Request("https://huggingface.co/x")
    with pytest.raises(VirnucproError, match="refused a redirect to non-https"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://cdn.example/x")
    follow = handler.redirect_request(
        urllib.request.Request("https://huggingface.co/x", headers={"Range": "bytes=5-"}),
        None, 302, "Found", {}, "https://cdn.example/x",
    )  # fmt: skip
    assert follow.full_url == "https://cdn.example/x" and follow.get_header("Range") == "bytes=5-"


def test_a_missing_file_is_not_retried(published, server, tmp_path):
    del server.files[urlsplit(files.ESM2_URL).path]
    with pytest.raises(VirnucproError, match=r"download failed \(HTTP 404 "):
        files.fetch_models(tmp_path / "models")
    assert [p for p, _ in server.requests].count(urlsplit(files.ESM2_URL).path) == 1


def test_cli_fetch_then_prepare(published, server, tmp_path, monkeypatch, capsys):
    """`virnucpro models fetch --cache DIR` in-process: fetched, checked, prepared."""
    from virnucpro import cli

    cache = tmp_path / "models"
    monkeypatch.setattr("sys.argv", ["virnucpro", "models", "fetch", "--cache", str(cache)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 0, capsys.readouterr().err
    assert checksum_sidecar(cache / "dnabert-s").is_file()  # prepared
    assert files.resolve_models(cache, chunk_size=500).classifier.is_file()

    server.files[urlsplit(files.ESM2_URL).path] = b"tampered"
    (cache / "esm2_t36_3B_UR50D.pt").unlink()
    with pytest.raises(SystemExit) as done:
        cli.main()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "esm2_t36_3B_UR50D.pt: the server has 8 bytes, the pinned size is " in err
    assert not list(cache.glob(".esm2*.part"))

    server.files[urlsplit(files.ESM2_URL).path] = b"X" * len(published["esm2"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("virnucpro: error: ") and "sha256 mismatch: expected " in err
