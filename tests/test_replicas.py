"""Two `whyrec serve` processes (two API replicas, as behind a load balancer) on one SQLite file:
what one is told, the other serves from; what either logged, a support agent finds on both. Also:
`whyrec serve` without --host listens on loopback only."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from whyrec.service.passwords import hash_password

pytestmark = pytest.mark.integration
STAFF = ("agent", "replica pass")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body: dict | None = None, auth: tuple[str, str] | None = None):
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def replicas(office_slice, cache_dir, slice_training, tmp_path_factory):
    folder = tmp_path_factory.mktemp("replicas")
    env = {
        **{k: v for k, v in os.environ.items() if k != "WHYREC_HOST"},
        "WHYREC_DATA": str(office_slice),
        "WHYREC_CACHE_DIR": str(cache_dir),
        "WHYREC_AUTO_TRAIN": "false",
        "WHYREC_DATABASE_URL": f"sqlite:///{folder / 'shared.sqlite3'}",
        "WHYREC_STAFF_USER": STAFF[0],
        "WHYREC_STAFF_PASSWORD_HASH": hash_password(STAFF[1], iterations=1_000),
        "WHYREC_MAX_NEW_TOKENS": "8",  # the text does not matter here, only where the records go
        "OMP_WAIT_POLICY": "PASSIVE",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    processes, urls = [], []
    for name in ("a", "b"):
        port = _free_port()
        log = (folder / f"{name}.log").open("w")
        processes.append((subprocess.Popen([sys.executable, "-m", "whyrec.cli", "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT), port, folder / f"{name}.log"))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        deadline = time.time() + 300
        for (process, _port, log_path), url in zip(processes, urls):
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if _call(f"{url}/api/health")["status"] == "ok":
                        break
                except OSError:
                    pass
                assert time.time() < deadline, "whyrec serve did not answer in time:\n" + log_path.read_text()
                time.sleep(1)
        yield urls, [(p.pid, port) for p, port, _ in processes]
    finally:
        for process, _port, _log in processes:
            process.terminate()
            process.wait(timeout=30)


def test_an_event_posted_to_one_replica_changes_the_slate_the_other_serves(replicas, slice_catalog):
    (a, b), _ = replicas
    user = slice_catalog.users[60]
    first = [i["item_id"] for i in _call(f"{b}/api/shoppers/{user}/recommendations?k=2")["items"]]
    _call(f"{a}/api/shoppers/{user}/events", {"item_id": first[0], "kind": "purchase"})
    _call(f"{a}/api/shoppers/{user}/feedback", {"kind": "not_interested", "item_id": first[1]})
    second = _call(f"{b}/api/shoppers/{user}/recommendations?k=2")
    assert not {first[0], first[1]} & {i["item_id"] for i in second["items"]}
    record = _call(f"{b}/api/impressions/{second['impression_id']}", auth=STAFF)
    assert record["history"][-1] == first[0]  # B ranked on the purchase posted to A


def test_impressions_written_by_both_replicas_are_found_on_either(replicas, slice_catalog):
    (a, b), _ = replicas
    user = slice_catalog.users[61]
    written = {_call(f"{url}/api/shoppers/{user}/recommendations?k=1")["impression_id"] for url in (a, b)}
    for url in (a, b):
        found = {r["impression_id"] for r in _call(f"{url}/api/impressions?user_id={user}", auth=STAFF)}
        assert written <= found
        for impression_id in written:
            assert _call(f"{url}/api/impressions/{impression_id}", auth=STAFF)["user_id"] == user


def _listening(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the socket table from /proc (Linux)")
def test_whyrec_serve_without_host_listens_on_loopback_only(replicas):
    _, processes = replicas
    for _pid, port in processes:
        assert _listening(port) == {"0100007F"}  # 127.0.0.1, little-endian hex; no 0.0.0.0 or :: socket
        outside = _own_address()
        if outside:
            with pytest.raises(urllib.error.URLError):
                urllib.request.urlopen(f"http://{outside}:{port}/api/health", timeout=5)


def _own_address() -> str | None:
    """An address of this machine other than loopback (where an outside client would connect), if any."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address
