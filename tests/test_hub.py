"""The model registry and cache: downloads from a local HTTP server, hashes, the restricted
unpickler, and ``lamost-rrnet models``."""

from __future__ import annotations

import json
import os
import pickle
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from helpers_published import MODEL_DIR, write_fake_published
from lamost_rrnet import download, hub
from lamost_rrnet.download import fetch
from lamost_rrnet.ensemble import Ensemble
from lamost_rrnet.errors import ModelError
from lamost_rrnet.hashing import git_blob_sha1, sha256_file
from lamost_rrnet.hub import verify
from lamost_rrnet.model_resolution import load_model, load_registered
from lamost_rrnet.published_layout import load_label_config

REAL_LABEL_CONFIG_SHA1 = "6ab54bb50d1c5a9741ca765a782b0b0c7df7f4b3"


class Server:
    """Serves files from a folder on 127.0.0.1, with HTTP ranges; can misbehave on request."""

    def __init__(self, root: Path):
        self.root = root
        self.drops = 0  # responses still to cut off halfway
        self.ranges = True
        self.pause = 0.0  # seconds between blocks of 64 kB, to keep a download going a while
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = server.root / urllib.parse.unquote(self.path).lstrip("/")
                server.requests.append((self.path, self.headers.get("Range")))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                header = self.headers.get("Range")
                if header and server.ranges:
                    start = int(header.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drops:
                    server.drops -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                for start in range(0, len(body), 1 << 16):
                    self.wfile.write(body[start : start + (1 << 16)])
                    time.sleep(server.pause)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    s = Server(root)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private cache and registry file, and no waiting between retries."""
    monkeypatch.setenv("LAMOST_RRNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(tmp_path / "registry.json"))
    monkeypatch.setattr(download, "RETRY_WAIT", 0.0)
    (tmp_path / "registry.json").write_text("{}")
    return tmp_path


def register(tmp_path: Path, name: str, files: list[dict], layout: str = "published", **extra):
    path = tmp_path / "registry.json"
    entries = json.loads(path.read_text())
    entries[name] = {"description": f"test model {name}", "layout": layout, "files": files}
    entries[name].update(extra)
    path.write_text(json.dumps(entries))


def served(server: Server, rel: str, data: bytes) -> str:
    target = server.root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return f"{server.url}/{rel}"


def gitsha1(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


def test_git_blob_sha1(tmp_path):
    (tmp_path / "f").write_bytes(b"hello\n")
    assert git_blob_sha1(tmp_path / "f") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_shipped_registry_holds_the_published_files(shared_dir, monkeypatch):
    monkeypatch.delenv(hub.REGISTRY_ENV)
    entry = hub.get_entry("rrnet2022")
    published = json.loads((shared_dir / "published_rrnet" / "registry.json").read_text())
    want = {f["path"]: (f["url"], f"gitsha1:{f['git_blob_sha1']}") for f in published["files"]}
    assert {f.path: (f.url, f.hash) for f in entry.files} == want
    assert len(entry.files) == 13 and entry.commit == published["commit"]
    assert entry.run == MODEL_DIR and entry.layout == "published"


def test_download_verifies_the_real_label_config(shared_dir, server, isolated):
    data = (shared_dir / "published_rrnet" / "label_config.pkl").read_bytes()
    url = served(server, "data/refer_set/label_config.pkl", data)
    rel = "data/refer_set/label_config.pkl"
    register(
        isolated, "cfg", [{"path": rel, "url": url, "hash": f"gitsha1:{REAL_LABEL_CONFIG_SHA1}"}]
    )
    root = fetch("cfg", progress=False)
    assert (root / rel).read_bytes() == data
    assert root == isolated / "cache" / "models" / "cfg"
    assert [s.status for s in verify("cfg")] == ["ok"]
    n = len(server.requests)
    fetch("cfg", progress=False)  # cached and verified: no second download
    assert len(server.requests) == n


def test_wrong_hash_is_refused_and_removed(server, isolated):
    url = served(server, "w.bin", b"not what the registry says")
    register(isolated, "bad", [{"path": "w.bin", "url": url, "hash": "gitsha1:" + "0" * 40}])
    with pytest.raises(ModelError, match=r"w.bin: downloaded from .*but its hash is gitsha1:"):
        fetch("bad", progress=False)
    assert not (isolated / "cache" / "models" / "bad" / "w.bin").exists()


def test_a_dropped_connection_is_resumed_with_a_range(server, isolated):
    data = os.urandom(300_000)
    url = served(server, "big.bin", data)
    register(isolated, "big", [{"path": "big.bin", "url": url, "hash": f"gitsha1:{gitsha1(data)}"}])
    server.drops = 1
    root = fetch("big", progress=True)
    assert (root / "big.bin").read_bytes() == data
    assert server.requests[0][1] is None
    resumed_at = int(server.requests[1][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(data) // 2  # what arrived before the drop is kept
    assert not (root / "big.bin.partial").exists()


def test_without_ranges_a_retry_starts_over(server, isolated):
    data = os.urandom(100_000)
    url = served(server, "b.bin", data)
    register(isolated, "b", [{"path": "b.bin", "url": url, "hash": f"gitsha1:{gitsha1(data)}"}])
    server.drops, server.ranges = 2, False
    assert (fetch("b", progress=False) / "b.bin").read_bytes() == data
    assert len(server.requests) == 3


def test_a_server_that_keeps_dropping_fails_cleanly(server, isolated):
    data = os.urandom(50_000)
    url = served(server, "d.bin", data)
    register(isolated, "d", [{"path": "d.bin", "url": url, "hash": f"gitsha1:{gitsha1(data)}"}])
    server.drops = 100
    with pytest.raises(ModelError, match=r"connection closed after \d+ of \d+ bytes"):
        fetch("d", progress=False, retries=2)
    assert len(server.requests) == 3
    assert not (isolated / "cache" / "models" / "d" / "d.bin").exists()


def test_processes_starting_at_once_download_each_file_once(server, isolated):
    import multiprocessing

    from concurrent_fetch import fetch_when_all_ready

    data = os.urandom(640_000)
    url = served(server, "m.bin", data)
    register(isolated, "m", [{"path": "m.bin", "url": url, "hash": f"gitsha1:{gitsha1(data)}"}])
    server.pause = 0.05  # half a second of download, for the others to arrive meanwhile
    context = multiprocessing.get_context("spawn")
    n = 4
    barrier, results = context.Barrier(n), context.Queue()
    procs = [
        context.Process(target=fetch_when_all_ready, args=("m", barrier, results)) for _ in range(n)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    root = isolated / "cache" / "models" / "m"
    assert got == [(str(root), ["ok"])] * n
    assert len(server.requests) == 1  # one download; the others waited and verified it
    assert (root / "m.bin").read_bytes() == data
    assert sorted(p.name for p in root.iterdir()) == ["m.bin"]


def test_offline_message_names_urls_and_places(isolated):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    files = [
        {
            "path": "data/refer_set/label_config.pkl",
            "url": f"http://127.0.0.1:{port}/a.pkl",
            "hash": "gitsha1:" + "1" * 40,
        },
        {
            "path": "model_log/run/SP0/weight_best.pkl",
            "url": f"http://127.0.0.1:{port}/b.pkl",
            "hash": "gitsha1:" + "2" * 40,
        },
    ]
    register(isolated, "off", files, repository="https://example.org/RRNet", commit="abc")
    with pytest.raises(ModelError) as info:
        fetch("off", progress=False, retries=1, timeout=2)
    message = str(info.value)
    root = isolated / "cache" / "models" / "off"
    assert message.startswith("could not download model 'off'")
    for f in files:
        assert f["url"] in message and str(root / f["path"]) in message
    assert "lamost-rrnet models verify off" in message
    assert "Or clone https://example.org/RRNet at commit abc" in message


def test_http_errors_are_not_retried(server, isolated):
    register(isolated, "gone", [{"path": "g", "url": f"{server.url}/nope", "hash": "sha256:0"}])
    with pytest.raises(ModelError, match="404"):
        fetch("gone", progress=False)
    assert len(server.requests) == 1


def test_registry_name_to_our_model_directory(server, isolated):
    from test_ensemble import small_ensemble, spectra

    ens = small_ensemble()
    ens.save(server.root / "tiny")
    files = [
        {"path": p.name, "url": f"{server.url}/tiny/{p.name}", "hash": f"sha256:{sha256_file(p)}"}
        for p in sorted((server.root / "tiny").iterdir())
    ]
    register(isolated, "tiny", files, layout="lamost-rrnet")
    got = load_registered("tiny", device="cpu")
    flux = spectra(2)
    for a, b in zip(got.predict(flux), ens.predict(flux), strict=True):
        assert np.array_equal(a, b)
    # a cached file that changed is fetched again
    cached = isolated / "cache" / "models" / "tiny" / "A0.safetensors"
    cached.write_bytes(b"garbage")
    assert [s.status for s in verify("tiny")].count("mismatch") == 1
    assert load_model("tiny", device="cpu").labels == ens.labels
    assert [s.status for s in verify("tiny")] == ["ok"] * len(files)


def test_registry_name_to_the_published_layout(shared_dir, server, isolated):
    write_fake_published(server.root, shared_dir, members=1)
    rels = [
        "data/refer_set/label_config.pkl",
        f"model_log/{MODEL_DIR}/SP0/weight_best.pkl",
        f"model_log/{MODEL_DIR}/CA0/weight_best.pkl",
    ]
    files = [
        {"path": r, "url": f"{server.url}/{r}", "hash": f"gitsha1:{git_blob_sha1(server.root / r)}"}
        for r in rels
    ]
    register(isolated, "pub", files, run=MODEL_DIR, version="v9", commit="c0ffee")
    ens = load_model("pub", device="cpu", progress=False)
    assert (ens.name, ens.version) == ("pub", "v9")
    assert ens.provenance["commit"] == "c0ffee"
    assert [len(g.members) for g in ens.groups] == [1, 1]


# -- the restricted unpickler -----------------------------------------------------------------


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_real_label_config_loads(shared_dir):
    path = shared_dir / "published_rrnet" / "label_config.pkl"
    assert git_blob_sha1(path) == REAL_LABEL_CONFIG_SHA1
    config = load_label_config(path)
    assert config["label_list"][:3] == ["Teff[K]", "Logg", "vmic[km/s]"]
    assert len(config["label_list"]) == 21
    assert config["flux_mean"].dtype == np.float32 and config["flux_mean"].shape == (7200,)
    assert config["label_std"].dtype == np.float64 and config["label_std"].shape == (21,)


def test_numpy2_pickles_load_too(tmp_path):
    # NumPy 2 pickles name numpy._core.multiarray, the published file numpy.core.multiarray.
    data = {
        "label_list": ["a", "b"],
        "label_mean": np.zeros(2),
        "label_std": np.ones(2),
        "flux_mean": np.ones(5, np.float32),
        "flux_std": np.ones(5, np.float32),
    }
    (tmp_path / "c.pkl").write_bytes(pickle.dumps(data))
    assert load_label_config(tmp_path / "c.pkl", n_pixels=5)["label_list"] == ["a", "b"]


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"label_list": Exploit(marker)}))
    with pytest.raises(ModelError, match=r"evil.pkl: refused to unpickle (posix|nt)\.system"):
        load_label_config(tmp_path / "evil.pkl")
    assert not marker.exists()
    (tmp_path / "eval.pkl").write_bytes(pickle.dumps(np.load))
    with pytest.raises(ModelError, match="refused to unpickle numpy.*load"):
        load_label_config(tmp_path / "eval.pkl")


# -- lamost-rrnet models ----------------------------------------------------------------------


def test_cli_models(run_cli, shared_dir, server, isolated):
    data = (shared_dir / "published_rrnet" / "label_config.pkl").read_bytes()
    url = served(server, "cfg.pkl", data)
    register(
        isolated,
        "cfg",
        [
            {
                "path": "data/refer_set/label_config.pkl",
                "url": url,
                "hash": f"gitsha1:{REAL_LABEL_CONFIG_SHA1}",
            }
        ],
        approx_bytes=58464,
    )
    code, out, err = run_cli("models", "list")
    assert code == 0, err
    assert out.splitlines()[0].split()[:3] == ["NAME", "SIZE", "CACHED"]
    assert any(line.split()[:4] == ["cfg", "~58.5", "kB", "no"] for line in out.splitlines())
    assert any(line.startswith("rrnet2022") for line in out.splitlines())

    code, out, err = run_cli("models", "download", "cfg", "--quiet")
    assert code == 0, err
    assert out == "" and err == ""
    root = isolated / "cache" / "models" / "cfg"
    assert (root / "data/refer_set/label_config.pkl").read_bytes() == data

    code, out, _ = run_cli("models", "list")
    assert any(line.split()[:4] == ["cfg", "~58.5", "kB", "yes"] for line in out.splitlines())
    code, out, _ = run_cli("models", "path", "cfg")
    assert (code, out.strip()) == (0, str(root))
    code, out, err = run_cli("models", "verify", "cfg")
    assert code == 0 and out.startswith("ok\t") and "verified" in err

    (root / "data/refer_set/label_config.pkl").write_bytes(b"changed")
    code, out, err = run_cli("models", "verify", "cfg")
    assert code == 1 and out.startswith("mismatch\t")
    assert "1 of 1 files missing or corrupt" in err

    code, _, err = run_cli("models", "download", "nonesuch")
    assert code == 2 and "known models are" in err


# -- names and paths: nothing leaves its directory, and a registered name means the registry --


@pytest.mark.parametrize("name", ["../../x", "/abs", "a/b", "..", ".hidden", ""])
def test_registry_entry_names_that_are_not_plain_are_refused(isolated, run_cli, name):
    register(isolated, name, [{"path": "f", "url": "http://127.0.0.1:9/f", "hash": "sha256:0"}])
    with pytest.raises(ModelError, match=r"registry.json: not a valid model registry \(entry name"):
        hub.downloadable_models()
    code, out, err = run_cli("models", "list")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "is not a plain name" in err


@pytest.mark.parametrize("path", ["../f", "/etc/f", "a/../../f", "C:\\f", "..\\f"])
def test_registry_file_paths_outside_the_model_directory_are_refused(isolated, path):
    register(isolated, "m", [{"path": path, "url": "http://127.0.0.1:9/f", "hash": "sha256:0"}])
    with pytest.raises(ModelError, match="leaves the model directory"):
        hub.downloadable_models()


@pytest.mark.parametrize("outside", ["../A0.safetensors", "/tmp/A0.safetensors"])
@pytest.mark.parametrize("field", ["members", "normalization"])
def test_model_yaml_file_names_outside_the_directory_are_refused(tmp_path, outside, field):
    import yaml

    from test_ensemble import small_ensemble

    small_ensemble().save(tmp_path / "m")
    manifest_path = tmp_path / "m" / "model.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    if field == "members":
        manifest["groups"][0]["members"][0] = outside
    else:
        manifest["normalization"] = outside
    manifest["sha256"][outside] = "0" * 64
    manifest_path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(ModelError, match=r"model.yaml: file name .* is outside the model dir"):
        Ensemble.load(tmp_path / "m", device="cpu")


def test_a_registered_name_wins_over_a_folder_of_that_name(server, isolated, monkeypatch):
    from test_ensemble import small_ensemble, spectra

    published = small_ensemble(seed=0)
    published.save(server.root / "tiny")
    files = [
        {"path": p.name, "url": f"{server.url}/tiny/{p.name}", "hash": f"sha256:{sha256_file(p)}"}
        for p in sorted((server.root / "tiny").iterdir())
    ]
    register(isolated, "tiny", files, layout="lamost-rrnet")
    work = isolated / "work"
    small_ensemble(seed=1).save(work / "tiny")  # a look-alike folder in the working directory
    small_ensemble(seed=2).save(work / "mine")
    monkeypatch.chdir(work)
    flux = spectra(2)

    def predicts_like(model, reference):
        return all(
            np.array_equal(a, b)
            for a, b in zip(model.predict(flux), reference.predict(flux), strict=True)
        )

    assert predicts_like(load_model("tiny", device="cpu", progress=False), published)
    folder = Ensemble.load(work / "tiny", device="cpu")
    assert predicts_like(load_model("./tiny", device="cpu"), folder)
    assert predicts_like(load_model(str(work / "tiny"), device="cpu"), folder)
    assert not predicts_like(folder, published)
    # a bare name that is not registered but is a directory here is that directory
    assert predicts_like(load_model("mine", device="cpu"), Ensemble.load("mine", device="cpu"))


def test_an_unknown_bare_name_lists_the_registered_ones(isolated, run_cli, monkeypatch):
    register(isolated, "tiny", [{"path": "f", "url": "http://127.0.0.1:9/f", "hash": "sha256:0"}])
    monkeypatch.chdir(isolated)
    with pytest.raises(ModelError, match=r"unknown model 'nonesuch': .*\(rrnet2022, tiny\)"):
        load_model("nonesuch")
    with pytest.raises(ModelError, match="nonesuch/: no such model directory"):
        load_model("nonesuch/")
    (isolated / "spectrum.fits").write_bytes(b"")
    code, out, err = run_cli("predict", "spectrum.fits", "--model", "nonesuch", "--quiet")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "unknown model 'nonesuch'" in err and "rrnet2022, tiny" in err


# -- the names that moved out of the hub, for one release ------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("fetch", fetch),
        ("git_blob_sha1", git_blob_sha1),
        ("load_label_config", load_label_config),
        ("load_model", load_model),
        ("registry", hub.downloadable_models),
    ],
)
def test_the_old_hub_names_still_work_and_warn(old, new):
    with pytest.warns(DeprecationWarning, match=rf"lamost_rrnet\.hub\.{old} is deprecated"):
        assert getattr(hub, old) is new
    with pytest.warns(DeprecationWarning):
        exec(f"from lamost_rrnet.hub import {old}", {})
    with pytest.raises(AttributeError):
        hub.nonesuch  # noqa: B018


def test_ensemble_from_directory_still_works_and_warns(tmp_path):
    from test_ensemble import small_ensemble

    small_ensemble().save(tmp_path / "m")
    with pytest.warns(DeprecationWarning, match="use Ensemble.load"):
        ensemble = Ensemble.from_directory(tmp_path / "m")
    assert ensemble.device.type == "cpu"
