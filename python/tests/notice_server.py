"""Preemption notice servers of the project's own, on 127.0.0.1, speaking what each cloud documents:

- EC2 (IMDSv2 required): ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` gives a
  token; a GET without a valid one is 401; ``/latest/meta-data/spot/instance-action`` is 404 until the
  notice, then ``{"action": "terminate", "time": "…Z"}`` (two minutes ahead).
- GCP: ``/computeMetadata/v1/instance/preempted`` needs ``Metadata-Flavor: Google`` (else 403), answers
  ``FALSE`` or ``TRUE`` with that header; ``?wait_for_change=true`` blocks until the value changes (or
  ``timeout_sec``).
- Azure: ``/metadata/scheduledevents?api-version=2020-07-01`` needs ``Metadata: true`` (else 400), answers
  ``{"DocumentIncarnation": N, "Events": [...]}``, with a ``Preempt`` event after the notice.

``NoticeServer(after=S)`` announces the notice S seconds after it starts; ``appeared_at`` is when it did.
"""

import email.utils
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class NoticeServer:
    def __init__(self, after=None):
        self.started = time.time()
        self.after = after
        self.tokens = {}
        self.unauthorized = 0
        self._changed = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body=b"", headers=()):
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_PUT(self):
                if self.path == "/latest/api/token":
                    ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                    if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                        return self.reply(400)
                    token = uuid.uuid4().hex
                    server.tokens[token] = time.time() + int(ttl)
                    return self.reply(200, token.encode())
                self.reply(404)

            def do_GET(self):
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if url.path.startswith("/latest/"):
                    token = self.headers.get("X-aws-ec2-metadata-token")
                    if token not in server.tokens or server.tokens[token] < time.time():
                        server.unauthorized += 1
                        return self.reply(401)
                    if url.path == "/latest/meta-data/spot/instance-action":
                        if not server.announced():
                            return self.reply(404)
                        deadline = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(server.appeared_at + 120))
                        return self.reply(200, json.dumps({"action": "terminate", "time": deadline}).encode(), [("Content-Type", "text/plain")])
                    return self.reply(404)
                if url.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self.reply(403)
                    if query.get("wait_for_change") == ["true"]:
                        timeout = float(query.get("timeout_sec", ["60"])[0])
                        with server._changed:
                            server._changed.wait_for(server.announced, timeout=timeout)
                    value = b"TRUE" if server.announced() else b"FALSE"
                    return self.reply(200, value, [("Metadata-Flavor", "Google"), ("Content-Type", "application/text")])
                if url.path == "/metadata/scheduledevents":
                    if self.headers.get("Metadata") != "true":
                        return self.reply(400, json.dumps({"error": "Bad request. Required metadata header not specified"}).encode())
                    if query.get("api-version") != ["2020-07-01"]:
                        return self.reply(400)
                    events = []
                    if server.announced():
                        events.append({"EventId": "602d9444-d2cd-49c7-8624-8643e7171297", "EventType": "Preempt", "ResourceType": "VirtualMachine",
                                       "Resources": ["ckstore-vm"], "EventStatus": "Scheduled",
                                       "NotBefore": email.utils.formatdate(server.appeared_at + 30, usegmt=True),
                                       "Description": "", "EventSource": "Platform", "DurationInSeconds": -1})
                    body = json.dumps({"DocumentIncarnation": 2 if events else 1, "Events": events}).encode()
                    return self.reply(200, body, [("Content-Type", "application/json")])
                self.reply(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.appeared_at = None
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        if after is not None:
            self.timer = threading.Timer(after, self.announce)
            self.timer.daemon = True
            self.timer.start()

    def announce(self):
        with self._changed:
            if self.appeared_at is None:
                self.appeared_at = time.time()
            self._changed.notify_all()

    def announced(self):
        return self.appeared_at is not None

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def environment(self, cloud):
        """The endpoint overrides that point ckstore's watcher at this server for one cloud."""
        return {
            "ec2": {"AWS_EC2_METADATA_SERVICE_ENDPOINT": self.url, "CKSTORE_PREEMPTION_CLOUDS": "ec2"},
            "gcp": {"GCE_METADATA_HOST": self.url.replace("http://", ""), "CKSTORE_PREEMPTION_CLOUDS": "gcp"},
            "azure": {"CKSTORE_AZURE_METADATA_ENDPOINT": self.url, "CKSTORE_PREEMPTION_CLOUDS": "azure"},
        }[cloud]
