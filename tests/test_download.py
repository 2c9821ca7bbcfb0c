"""The download stage: ordered sources, checksum policy, atomic writes, clear offline errors.

Network sources are a loopback HTTP server serving fixture files made here; the dataset
spec is the real MNIST one with its files' checksums replaced by the fixtures'.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import cli
from pipeline.datasets import DatasetSpec, RemoteFile, fashion_mnist, gtsrb, mnist
from pipeline.stages import download as dl
from pipeline.stages.download import REPACKED, DownloadError, Source
from tests.conftest import REPO, SHARED_DATASETS, idx_bytes

NAMES = (mnist.TRAIN_IMAGES, mnist.TRAIN_LABELS, mnist.TEST_IMAGES, mnist.TEST_LABELS)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_payloads(seed: int = 0) -> dict[str, bytes]:
    """Four tiny valid IDX files, gzipped as upstream ships them: name -> .gz bytes."""
    rng = np.random.default_rng(seed)
    arrays = {
        mnist.TRAIN_IMAGES: rng.integers(0, 256, (6, 4, 4)),
        mnist.TRAIN_LABELS: rng.integers(0, 10, 6),
        mnist.TEST_IMAGES: rng.integers(0, 256, (3, 4, 4)),
        mnist.TEST_LABELS: rng.integers(0, 10, 3),
    }
    return {name: gzip.compress(idx_bytes(array.astype(np.uint8)), mtime=0) for name, array in arrays.items()}


def spec_for(payloads: dict[str, bytes], urls: tuple[str, ...] = ()) -> DatasetSpec:
    """MNIST's spec with `payloads` as its official files (md5, size and payload md5)."""
    remotes = tuple(
        RemoteFile(name, md5(data), len(data), md5(gzip.decompress(data))) for name, data in payloads.items()
    )
    return dataclasses.replace(mnist.SPEC, files=remotes, urls=urls)


def write_folder(folder: Path, payloads: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in payloads.items():
        (folder / name).write_bytes(data)
    return folder


def corrupt(data: bytes) -> bytes:
    """Same length, one byte flipped in the middle."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def recompressed(data: bytes, damage: bool = False) -> bytes:
    """The .gz recompressed differently (as Debian did), optionally with a damaged payload."""
    payload = gzip.decompress(data)
    return gzip.compress(corrupt(payload) if damage else payload, compresslevel=1, mtime=1234567890)


def listing(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


def assert_no_partials(folder: Path) -> None:
    assert not [name for name in listing(folder) if name.endswith(".part") or name.endswith(".tmp")]


class LoopbackServer:
    """An HTTP server on 127.0.0.1 serving `routes`; records every request path."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.truncated: set[str] = set()  # paths whose Content-Length promises more than is sent
        self.requests: list[str] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                state.requests.append(self.path)
                body = state.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # HTTP/1.0: the connection closes after the handler, as a dropped transfer would.
                self.wfile.write(body[: len(body) // 2] if self.path in state.truncated else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval: shutdown() waits for it, once per test.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def serve(self, prefix: str, payloads: dict[str, bytes]) -> str:
        """Serve `payloads` under /<prefix>/; returns that folder's URL."""
        for name, data in payloads.items():
            self.routes[f"/{prefix}/{name}"] = data
        return self.url(prefix + "/")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    yield srv
    srv.close()


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def no_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_TRACKING", "off")


@pytest.fixture
def payloads() -> dict[str, bytes]:
    return make_payloads()


def fetch(spec: DatasetSpec, sources: list[Source], out: Path, accept_repacks: bool = False) -> dict:
    return dl.download(spec, sources, out, accept_repacks=accept_repacks, timeout=5)


# --- sources ---------------------------------------------------------------------------------------------------


def test_sources_in_order_dataset_source_mirror_official_known_mirrors(tmp_path: Path) -> None:
    spec = spec_for(make_payloads(), urls=("https://official.example/", "https://mirror.example/"))
    sources = dl.sources_for(spec, str(tmp_path / "own"), str(tmp_path / "mirror"), environ={})
    assert [(s.label, s.base) for s in sources] == [
        ("dataset source (datasets.mnist.source)", str(tmp_path / "own")),
        ("mirror (download.mirror)", str(tmp_path / "mirror" / "mnist")),
        ("official host", "https://official.example/"),
        ("known mirror", "https://mirror.example/"),
    ]


def test_environment_variables_win_over_params(tmp_path: Path) -> None:
    spec = spec_for(make_payloads())
    environ = {"PIPELINE_SOURCE_MNIST": "http://own.example/data/", "PIPELINE_DATA_MIRROR": str(tmp_path / "env")}
    sources = dl.sources_for(spec, str(tmp_path / "own"), str(tmp_path / "mirror"), environ=environ)
    assert [(s.label, s.base) for s in sources] == [
        ("dataset source (PIPELINE_SOURCE_MNIST)", "http://own.example/data/"),
        ("mirror (PIPELINE_DATA_MIRROR)", str(tmp_path / "env" / "mnist")),
    ]


def test_empty_environment_variables_are_ignored(tmp_path: Path) -> None:
    spec = spec_for(make_payloads())
    environ = {"PIPELINE_DATA_MIRROR": "", "PIPELINE_SOURCE_MNIST": ""}
    sources = dl.sources_for(spec, None, str(tmp_path), environ=environ)
    assert [s.label for s in sources] == ["mirror (download.mirror)"]


def test_mirror_url_gets_the_dataset_subfolder_and_relative_folders_the_project_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    spec = spec_for(make_payloads())
    url_mirror = dl.sources_for(spec, None, "http://host/datasets/", environ={})[0]
    assert url_mirror.base == "http://host/datasets/mnist"
    assert url_mirror.location("a.gz") == "http://host/datasets/mnist/a.gz"
    relative = dl.sources_for(spec, "own", "../shared/datasets", environ={})
    assert [s.base for s in relative] == [
        str(tmp_path / "repo" / "own"),
        str(tmp_path / "shared" / "datasets" / "mnist"),
    ]
    as_file_url = dl.sources_for(spec, None, (tmp_path / "m").as_uri(), environ={})[0]
    assert not as_file_url.is_url and as_file_url.base == str(tmp_path / "m" / "mnist")


# --- fetching from one source, then the next ------------------------------------------------------------------


def test_good_files_from_http_are_verified_and_recorded(
    server: LoopbackServer, payloads: dict[str, bytes], tmp_path: Path
) -> None:
    url = server.serve("official", payloads)
    out = tmp_path / "data" / "raw" / "mnist"
    manifest = fetch(spec_for(payloads), [Source("official host", url)], out)
    for name, data in payloads.items():
        assert (out / name).read_bytes() == data
        assert manifest[name] == {
            "md5": md5(data),
            "bytes": len(data),
            "verified_by": "official md5",
            "source": url + name,
        }
    assert listing(out) == set(payloads) | {dl.MANIFEST}
    assert dl.files.read_json(out / dl.MANIFEST) == manifest


@pytest.mark.parametrize("failure", ["wrong checksum", "404", "truncated", "no server"])
def test_a_failing_source_is_reported_and_the_next_one_used(
    failure: str,
    server: LoopbackServer,
    payloads: dict[str, bytes],
    closed_port_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = server.serve("good", payloads)
    if failure == "wrong checksum":
        first = server.serve("bad", {name: corrupt(data) for name, data in payloads.items()})
    elif failure == "404":
        first = server.url("missing/")
    elif failure == "truncated":
        first = server.serve("cut", payloads)
        server.truncated.update(f"/cut/{name}" for name in payloads)
    else:
        first = closed_port_url
    out = tmp_path / "raw"
    with caplog.at_level(logging.INFO, logger="pipeline.stages.download"):
        manifest = fetch(spec_for(payloads), [Source("first", first), Source("second", good)], out)
    assert all(entry["source"] == good + name for name, entry in manifest.items())
    assert all((out / name).read_bytes() == data for name, data in payloads.items())
    assert_no_partials(out)
    expected_reason = {
        "wrong checksum": "rejected",
        "404": "HTTP 404",
        "truncated": "transfer truncated",
        "no server": "cannot connect",
    }[failure]
    assert expected_reason in caplog.text


def test_offline_gives_one_error_listing_every_source_and_how_to_set_a_mirror(
    server: LoopbackServer, payloads: dict[str, bytes], closed_port_url: str, tmp_path: Path
) -> None:
    sources = [
        Source("dataset source (PIPELINE_SOURCE_MNIST)", str(tmp_path / "nowhere")),
        Source("mirror (download.mirror)", server.serve("bad", {n: corrupt(d) for n, d in payloads.items()})),
        Source("official host", server.url("gone/")),
        Source("known mirror", closed_port_url),
        Source("known mirror", "ftp://example.invalid/mnist/"),
    ]
    out = tmp_path / "raw"
    with pytest.raises(DownloadError) as raised:
        fetch(spec_for(payloads), sources, out)
    message = str(raised.value)
    first = mnist.TRAIN_IMAGES
    assert f"mnist/{first}" in message
    lines = message.splitlines()
    assert [line for line in lines if line.startswith("  - ")] == [
        f"  - dataset source (PIPELINE_SOURCE_MNIST) {tmp_path / 'nowhere' / first}: no such file",
        next(
            line
            for line in lines
            if line.startswith(f"  - mirror (download.mirror) {server.url('bad/')}{first}: rejected, ")
        ),
        f"  - official host {server.url('gone/')}{first}: HTTP 404 Not Found",
        next(line for line in lines if line.startswith(f"  - known mirror {closed_port_url}{first}: cannot connect")),
        f"  - known mirror ftp://example.invalid/mnist/{first}: only http(s) URLs and local folders are supported",
    ]
    assert "PIPELINE_DATA_MIRROR" in message and "download.mirror" in message and "PIPELINE_SOURCE_MNIST" in message
    assert listing(out) == set()  # nothing half-written, no manifest of nothing


def test_a_failure_midway_keeps_only_verified_files(
    server: LoopbackServer, payloads: dict[str, bytes], tmp_path: Path
) -> None:
    partial = dict(list(payloads.items())[:2])
    url = server.serve("some", partial)
    server.routes[f"/some/{NAMES[2]}"] = payloads[NAMES[2]]
    server.truncated.add(f"/some/{NAMES[2]}")
    out = tmp_path / "raw"
    with pytest.raises(DownloadError, match="transfer truncated"):
        fetch(spec_for(payloads), [Source("official host", url)], out)
    assert listing(out) == set(partial) | {dl.MANIFEST}
    assert set(dl.files.read_json(out / dl.MANIFEST)) == set(partial)


@pytest.mark.parametrize("kind", ["folder", "url"])
def test_mirror_as_folder_or_url(kind: str, server: LoopbackServer, payloads: dict[str, bytes], tmp_path: Path) -> None:
    if kind == "folder":
        mirror = str(tmp_path / "mirror")
        write_folder(tmp_path / "mirror" / "mnist", payloads)
    else:
        server.serve("datasets/mnist", payloads)
        mirror = server.url("datasets")
    sources = dl.sources_for(spec_for(payloads), None, mirror, environ={})
    out = tmp_path / "raw"
    manifest = fetch(spec_for(payloads), sources, out)
    assert all((out / name).read_bytes() == data for name, data in payloads.items())
    expected_prefix = str(tmp_path / "mirror" / "mnist") if kind == "folder" else server.url("datasets/mnist/")
    assert all(entry["source"].startswith(expected_prefix) for entry in manifest.values())


def test_environment_mirror_is_used_instead_of_the_params_mirror(
    server: LoopbackServer, payloads: dict[str, bytes], tmp_path: Path
) -> None:
    server.serve("params/mnist", payloads)
    write_folder(tmp_path / "env_mirror" / "mnist", payloads)
    sources = dl.sources_for(
        spec_for(payloads), None, server.url("params"), environ={"PIPELINE_DATA_MIRROR": str(tmp_path / "env_mirror")}
    )
    fetch(spec_for(payloads), sources, tmp_path / "raw")
    assert server.requests == []


# --- files already present --------------------------------------------------------------------------------------


def test_files_present_and_valid_are_not_fetched_again(
    server: LoopbackServer, payloads: dict[str, bytes], tmp_path: Path
) -> None:
    url = server.serve("official", payloads)
    out = tmp_path / "raw"
    first = fetch(spec_for(payloads), [Source("official host", url)], out)
    assert len(server.requests) == len(payloads)
    server.requests.clear()
    mtimes = {name: (out / name).stat().st_mtime_ns for name in payloads}
    assert fetch(spec_for(payloads), [Source("official host", url)], out) == first
    assert server.requests == []
    assert {name: (out / name).stat().st_mtime_ns for name in payloads} == mtimes


def test_files_put_in_place_by_hand_are_verified_and_kept(
    payloads: dict[str, bytes], tmp_path: Path, closed_port_url: str
) -> None:
    out = write_folder(tmp_path / "raw", payloads)  # no manifest
    manifest = fetch(spec_for(payloads), [Source("official host", closed_port_url)], out)
    assert all(entry["verified_by"] == "official md5" for entry in manifest.values())


def test_a_corrupt_existing_file_is_fetched_again(
    server: LoopbackServer, payloads: dict[str, bytes], tmp_path: Path
) -> None:
    url = server.serve("official", payloads)
    out = tmp_path / "raw"
    fetch(spec_for(payloads), [Source("official host", url)], out)
    damaged = NAMES[1]
    (out / damaged).write_bytes(corrupt(payloads[damaged]))
    server.requests.clear()
    fetch(spec_for(payloads), [Source("official host", url)], out)
    assert server.requests == [f"/official/{damaged}"]
    assert (out / damaged).read_bytes() == payloads[damaged]


def test_a_corrupt_existing_file_is_removed_when_no_source_has_a_good_copy(
    payloads: dict[str, bytes], tmp_path: Path, closed_port_url: str
) -> None:
    out = write_folder(tmp_path / "raw", payloads)
    (out / NAMES[0]).write_bytes(payloads[NAMES[0]][:10])
    with pytest.raises(DownloadError):
        fetch(spec_for(payloads), [Source("official host", closed_port_url)], out)
    assert NAMES[0] not in listing(out)
    assert_no_partials(out)


def test_leftovers_of_a_killed_run_are_removed(payloads: dict[str, bytes], tmp_path: Path) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / f".{NAMES[0]}.12345.part").write_bytes(b"half")
    fetch(spec_for(payloads), [Source("mirror", str(write_folder(tmp_path / "src", payloads)))], out)
    assert_no_partials(out)


# --- checksum policy --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "url"])
def test_a_recompressed_gz_is_accepted_on_its_payload_md5(
    kind: str, server: LoopbackServer, payloads: dict[str, bytes], tmp_path: Path
) -> None:
    repacked = {name: recompressed(data) for name, data in payloads.items()}
    assert all(md5(repacked[name]) != md5(payloads[name]) for name in payloads)
    base = str(write_folder(tmp_path / "debian", repacked)) if kind == "folder" else server.serve("d", repacked)
    out = tmp_path / "raw"
    manifest = fetch(spec_for(payloads), [Source("dataset source", base)], out)
    assert all(entry["verified_by"] == "official payload md5" for entry in manifest.values())
    assert all((out / name).read_bytes() == data for name, data in repacked.items())
    # and on the next run it is recognised again, not fetched again
    server.requests.clear()
    assert fetch(spec_for(payloads), [Source("dataset source", base)], out) == manifest
    assert server.requests == []


@pytest.mark.parametrize("damage", ["payload", "truncated gzip", "not gzip"])
def test_a_recompressed_gz_with_a_bad_payload_is_rejected(
    damage: str, payloads: dict[str, bytes], tmp_path: Path
) -> None:
    bad = {
        "payload": lambda d: recompressed(d, damage=True),
        "truncated gzip": lambda d: recompressed(d)[:-9],
        "not gzip": lambda d: gzip.decompress(d),
    }[damage]
    folder = write_folder(tmp_path / "debian", {name: bad(data) for name, data in payloads.items()})
    out = tmp_path / "raw"
    with pytest.raises(DownloadError, match="rejected, .* expected the official"):
        fetch(spec_for(payloads), [Source("dataset source", str(folder))], out)
    assert listing(out) == set()


def repack_setup(tmp_path: Path, md5sums_in: str) -> tuple[DatasetSpec, Path, dict[str, bytes]]:
    """Official files A; a local mirror holding different files B vouched for by an MD5SUMS."""
    official, repacked = make_payloads(seed=0), make_payloads(seed=1)
    mirror = tmp_path / "mirror"
    write_folder(mirror / "mnist", repacked)
    if md5sums_in == "parent":
        (mirror / "MD5SUMS").write_text("".join(f"{md5(d)}  mnist/{n}\n" for n, d in repacked.items()))
    else:
        (mirror / "mnist" / "MD5SUMS").write_text("".join(f"{md5(d)} *{n}\n" for n, d in repacked.items()))
    return spec_for(official), mirror, repacked


@pytest.mark.parametrize("md5sums_in", ["parent", "folder"])
def test_a_local_repack_vouched_for_by_md5sums_is_accepted_when_allowed(md5sums_in: str, tmp_path: Path) -> None:
    spec, mirror, repacked = repack_setup(tmp_path, md5sums_in)
    out = tmp_path / "raw"
    sources = dl.sources_for(spec, None, str(mirror), environ={})
    manifest = fetch(spec, sources, out, accept_repacks=True)
    assert all(entry["verified_by"] == REPACKED for entry in manifest.values())
    assert all((out / name).read_bytes() == data for name, data in repacked.items())
    # kept on the next run while repacks are accepted ...
    assert fetch(spec, [], out, accept_repacks=True) == manifest
    # ... and no longer once they are not
    with pytest.raises(DownloadError, match="accept_local_repacks"):
        fetch(spec, sources, out, accept_repacks=False)
    assert listing(out) - {dl.MANIFEST} == set()


def test_a_local_repack_is_rejected_when_repacks_are_not_accepted(tmp_path: Path) -> None:
    spec, mirror, _ = repack_setup(tmp_path, "parent")
    with pytest.raises(DownloadError, match="set download.accept_local_repacks: true"):
        fetch(spec, dl.sources_for(spec, None, str(mirror), environ={}), tmp_path / "raw", accept_repacks=False)


def test_a_repack_over_http_is_rejected_even_with_an_md5sums(server: LoopbackServer, tmp_path: Path) -> None:
    official, repacked = make_payloads(seed=0), make_payloads(seed=1)
    server.serve("mirror/mnist", repacked)
    sums = "".join(f"{md5(d)}  {n}\n" for n, d in repacked.items()).encode()
    server.routes["/mirror/mnist/MD5SUMS"] = sums
    server.routes["/mirror/MD5SUMS"] = sums
    sources = dl.sources_for(spec_for(official), None, server.url("mirror"), environ={})
    out = tmp_path / "raw"
    with pytest.raises(DownloadError, match="rejected, .* expected the official"):
        fetch(spec_for(official), sources, out, accept_repacks=True)
    assert listing(out) == set()


def test_a_parent_md5sums_vouches_only_for_its_own_subfolder(tmp_path: Path) -> None:
    official, repacked = make_payloads(seed=0), make_payloads(seed=1)
    folder = write_folder(tmp_path / "copies" / "mine", repacked)
    (tmp_path / "copies" / "MD5SUMS").write_text("".join(f"{md5(d)}  other/{n}\n" for n, d in repacked.items()))
    with pytest.raises(DownloadError):
        fetch(spec_for(official), [Source("dataset source", str(folder))], tmp_path / "raw", accept_repacks=True)


def test_read_md5sums_formats(tmp_path: Path) -> None:
    folder = tmp_path / "gtsrb"
    folder.mkdir()
    (tmp_path / "MD5SUMS").write_text(
        "AAAA  gtsrb/a.zip\nbbbb  mnist/b.gz\ncccc  gtsrb/sub/c.zip\n\nnot-a-line\ndddd  gtsrb/d.zip\n"
    )
    (folder / "MD5SUMS").write_text("eeee *e.zip\nffff  ./f.zip\n1111  d.zip\n")
    assert dl.read_md5sums(folder) == {"a.zip": "aaaa", "d.zip": "1111", "e.zip": "eeee", "f.zip": "ffff"}
    assert dl.read_md5sums(tmp_path / "absent") == {}


# --- the stage's main -------------------------------------------------------------------------------------------


def stage_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: DatasetSpec, mirror: str) -> Path:
    """A folder holding the project's params.yaml with `mirror`, as the stage's working directory."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["download"]["mirror"] = mirror
    params["download"]["timeout_seconds"] = 5
    params["datasets"]["mnist"]["source"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    for variable in ("PIPELINE_DATA_MIRROR", "PIPELINE_SOURCE_MNIST"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(dl, "get", lambda key: spec)
    return tmp_path


def run_stage(*argv: str) -> int:
    """The download stage through the shared entry point, in this process; returns its exit status."""
    return cli.run(["download", *argv])


def test_main_downloads_from_the_params_mirror(
    server: LoopbackServer, payloads: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.serve("mirror/mnist", payloads)
    root = stage_project(tmp_path, monkeypatch, spec_for(payloads), server.url("mirror"))
    assert run_stage("mnist") == 0
    assert listing(root / "data" / "raw" / "mnist") == set(payloads) | {dl.MANIFEST}


def test_main_offline_prints_one_error_and_exits_2(
    payloads: dict[str, bytes],
    closed_port_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    spec = spec_for(payloads, urls=(closed_port_url,))
    root = stage_project(tmp_path, monkeypatch, spec, "relative/mirror")
    assert run_stage("mnist") == 2
    message = capsys.readouterr().err
    assert message.startswith("error: could not get a verified copy of mnist/") and message.count("error:") == 1
    assert "Traceback" not in message
    assert f"mirror (download.mirror) {root / 'relative' / 'mirror' / 'mnist' / NAMES[0]}: no such file" in message
    assert f"official host {closed_port_url}{NAMES[0]}: cannot connect" in message
    assert "PIPELINE_DATA_MIRROR" in message
    assert_no_partials(root / "data" / "raw" / "mnist")


# --- the real files ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATASETS / "mnist").is_dir(), reason="../shared/datasets/mnist is absent")
def test_real_mnist_files_match_the_official_md5s() -> None:
    for remote in mnist.SPEC.files:
        verdict = dl.verify(SHARED_DATASETS / "mnist" / remote.name, remote, None, accept_repacks=False)
        assert verdict.ok and verdict.how == "official md5", (remote.name, verdict)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATASETS / "gtsrb").is_dir(), reason="../shared/datasets/gtsrb is absent")
def test_real_gtsrb_archives_are_official_or_vouched_for_by_their_md5sums() -> None:
    """The official archives verify on their own; a repack (the partial copy ../shared holds now) only with
    its MD5SUMS and accept_local_repacks, never as if from the network."""
    folder = SHARED_DATASETS / "gtsrb"
    sums = dl.read_md5sums(folder)
    for remote in gtsrb.SPEC.files:
        verdict = dl.verify(folder / remote.name, remote, sums, accept_repacks=True)
        assert verdict.ok and verdict.how in ("official md5", REPACKED), (remote.name, verdict)
        as_downloaded = dl.verify(folder / remote.name, remote, None, accept_repacks=True)
        if verdict.how == REPACKED:
            assert not dl.verify(folder / remote.name, remote, sums, accept_repacks=False).ok
            assert not as_downloaded.ok
        else:
            assert as_downloaded.ok


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_accepted_on_its_payload_md5s() -> None:
    for remote in fashion_mnist.SPEC.files:
        verdict = dl.verify(DEBIAN_FASHION_MNIST / remote.name, remote, None, accept_repacks=False)
        assert verdict.ok and verdict.how == "official payload md5", (remote.name, verdict)
