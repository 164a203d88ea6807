"""Download, verification and caching against a local HTTP server (no network).

The server serves a temp folder; files are put at ``<sha256>/<name>`` like OpenAI's
URLs, so ``clip.download`` takes the expected digest from the URL. Loading by model
name is tested by pointing one entry of ``clip.loading.MODEL_FILES`` at a random
checkpoint and ``CLIP_DOWNLOAD_BASE_URL`` at the server.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

import clip
import clip.loading
from tests.factories.clip_checkpoint import random_openai_state_dict, write_random_clip


class _Server:
    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, name: str, payload: bytes, sha: str | None = None) -> str:
        sha = sha or hashlib.sha256(payload).hexdigest()
        (self.root / sha).mkdir(parents=True, exist_ok=True)
        (self.root / sha / name).write_bytes(payload)
        return f"{self.base}/{sha}/{name}"


@pytest.fixture
def server(tmp_path):
    srv = _Server(tmp_path / "served")
    srv.root.mkdir()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("CLIP_CACHE_DIR", str(path))
    return path


def test_default_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.delenv("CLIP_CACHE_DIR", raising=False)
    assert clip.default_cache_dir().endswith(str(Path(".cache") / "clip"))
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path))
    assert clip.default_cache_dir() == str(tmp_path)


def test_model_urls(monkeypatch):
    monkeypatch.delenv("CLIP_DOWNLOAD_BASE_URL", raising=False)
    assert clip.model_url("ViT-B/16") == (
        "https://openaipublic.azureedge.net/clip/models/"
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"
    )
    monkeypatch.setenv("CLIP_DOWNLOAD_BASE_URL", "http://mirror.local/clip/")
    assert clip.model_url("RN50").startswith("http://mirror.local/clip/afeb0e10")
    assert clip.model_url("RN50").endswith("/RN50.pt")


def test_download_once_then_reuse(server, cache):
    payload = b"checkpoint bytes" * 1000
    url = server.publish("model.pt", payload)
    path = clip.download(url)  # root defaults to the cache dir (CoOp calls it with one argument)
    assert Path(path) == cache / "model.pt" and Path(path).read_bytes() == payload
    assert len(server.requests) == 1
    assert clip.download(url, str(cache)) == path
    assert clip.loading._download(url) == path
    assert len(server.requests) == 1  # served from the cache, digest verified locally
    assert sorted(p.name for p in cache.iterdir()) == ["model.pt"]


def test_explicit_digest_for_plain_url(server, cache):
    payload = b"abc"
    (server.root / "plain.bin").write_bytes(payload)
    url = f"{server.base}/plain.bin"
    path = clip.download(url, str(cache), expected_sha256=hashlib.sha256(payload).hexdigest())
    assert Path(path).read_bytes() == payload
    with pytest.raises(RuntimeError, match="expected 0{64}"):
        (cache / "plain.bin").unlink()
        clip.download(url, str(cache), expected_sha256="0" * 64)


def test_wrong_checksum_raises_and_leaves_no_file(server, cache):
    claimed = hashlib.sha256(b"the real thing").hexdigest()
    url = server.publish("model.pt", b"something else", sha=claimed)
    actual = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(RuntimeError) as info:
        clip.download(url, str(cache))
    message = str(info.value)
    assert claimed in message and actual in message and "model.pt" in message
    assert "Delete" in message and "local file path" in message
    assert list(cache.iterdir()) == []  # no half or bad files


def test_stale_cached_file_is_replaced(server, cache):
    payload = b"good bytes"
    url = server.publish("model.pt", payload)
    cache.mkdir()
    (cache / "model.pt").write_bytes(b"corrupted")
    with pytest.warns(UserWarning, match="downloading it again"):
        path = clip.download(url, str(cache))
    assert Path(path).read_bytes() == payload and len(server.requests) == 1


def test_cache_path_that_is_a_directory_raises(server, cache):
    url = server.publish("model.pt", b"x")
    (cache / "model.pt").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="not a regular file"):
        clip.download(url, str(cache))


def test_unreachable_server_gives_clear_error(cache):
    with socket.socket() as sock:  # find a free port, then close it: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{'a' * 64}/model.pt"
    with pytest.raises(RuntimeError) as info:
        clip.download(url, str(cache))
    assert url in str(info.value) and "manually" in str(info.value)
    assert list(cache.iterdir()) == []


def test_missing_file_on_server_gives_clear_error(server, cache):
    url = f"{server.base}/{'b' * 64}/absent.pt"
    with pytest.raises(RuntimeError, match="Could not download .*absent.pt"):
        clip.download(url, str(cache))
    assert list(cache.iterdir()) == []


def test_load_by_name_downloads_verifies_and_builds(server, cache, tmp_path, monkeypatch):
    source = write_random_clip(tmp_path / "src" / "RN50.pt", "rn", fmt="jit", seed=6)
    payload = source.read_bytes()
    sha = hashlib.sha256(payload).hexdigest()
    server.publish("RN50.pt", payload)
    monkeypatch.setitem(clip.loading.MODEL_FILES, "RN50", ("RN50.pt", sha))
    monkeypatch.setenv("CLIP_DOWNLOAD_BASE_URL", server.base)
    model, preprocess = clip.load("RN50")
    assert server.requests == [f"/{sha}/RN50.pt"]
    assert (cache / "RN50.pt").read_bytes() == payload
    reference = clip.build_model(random_openai_state_dict("rn", seed=6)).float()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.encode_image(image), reference.encode_image(image))
    clip.load("RN50")
    assert len(server.requests) == 1
