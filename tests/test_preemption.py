"""A node about to go (pipeline/train/preemption.py): the notice read from an instance-metadata
service on loopback, as EC2 serves its spot notice (IMDSv2's token first), and the loop's answer
to a notice on any rank: a checkpoint at the next step boundary, stored before training goes on,
and the event in MLflow. (Ray's drain notice on a simulated cluster: tests/test_pretrain_cluster.py.)"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pipeline.train.preemption import Watch


class Metadata(BaseHTTPRequestHandler):
    """EC2's metadata service, as much of it as the spot notice needs: a token for a PUT, then
    404 for spot/instance-action until `action` is set."""

    action = None
    tokens_seen: list = []

    def do_PUT(self):  # noqa: N802
        if self.path == "/latest/api/token":
            self._answer(200, b"TOKEN")
        else:
            self._answer(404, b"")

    def do_GET(self):  # noqa: N802
        type(self).tokens_seen.append(self.headers.get("X-aws-ec2-metadata-token"))
        if self.path == "/latest/meta-data/spot/instance-action" and type(self).action:
            self._answer(200, json.dumps(type(self).action).encode())
        else:
            self._answer(404, b"")

    def _answer(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata():
    server = HTTPServer(("127.0.0.1", 0), Metadata)
    Metadata.action, Metadata.tokens_seen = None, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/latest/meta-data/spot/instance-action"
    server.shutdown()


def test_the_spot_notice_is_read_from_the_instance_metadata_with_a_token(metadata):
    watch = Watch(None, metadata)
    try:
        time.sleep(2.5)
        assert watch.notice is None and watch.url  # 404: nothing scheduled, and still asking
        Metadata.action = {"action": "terminate", "time": "2030-01-02T03:04:05Z"}
        deadline = time.time() + 10
        while watch.notice is None and time.time() < deadline:
            time.sleep(0.1)
        assert watch.notice["deadline"] == 1893553445  # 2030-01-02T03:04:05Z, in Unix seconds
        assert watch.notice["source"] == f"instance metadata ({metadata})"
        assert set(Metadata.tokens_seen) == {"TOKEN"}  # IMDSv2: every GET with the session token
    finally:
        watch.stop()


def test_a_machine_without_a_metadata_service_stops_asking():
    watch = Watch(None, "http://127.0.0.1:9/latest/meta-data/spot/instance-action")  # nothing listens
    try:
        deadline = time.time() + 10
        while watch.url and time.time() < deadline:
            time.sleep(0.1)
        assert watch.url is None and watch.notice is None
    finally:
        watch.stop()
