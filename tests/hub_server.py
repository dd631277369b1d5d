"""A stand-in for the Hugging Face Hub's HTTP API on a loopback port, recording every request it is sent:
enough of it for `create_repo` and `upload_folder` (files committed inline, as regular git blobs), and for
`hf_hub_download` of the model configs it is given."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Recorded:
    requests: list[dict] = field(default_factory=list)  # method, path, headers, body (text)
    repos: list[dict] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # path in the repo -> content
    cards: list[dict] = field(default_factory=list)  # model cards sent for validation


class HubStandIn:
    """`with HubStandIn() as hub:` serves at `hub.url` until the block ends; `configs` are the config.json files of
    the model repositories it has (any other repository is not found). With `refuse_commits`, a commit fails with
    a server error whose message quotes the request's Authorization header, as a careless proxy's might."""

    def __init__(self, configs: dict[str, dict] | None = None, refuse_commits: bool = False) -> None:
        self.recorded = Recorded()
        recorded = self.recorded
        configs = configs or {}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # a file's metadata: commit, ETag and size in the headers
                self._record(b"")
                self._send_config(body=False)

            def do_GET(self) -> None:
                self._record(b"")
                if "/resolve/" in self.path:
                    self._send_config(body=True)
                else:
                    self._reply(404, {"error": "not found"})

            def _send_config(self, body: bool) -> None:
                """GET or HEAD /<org>/<name>/resolve/<revision>/config.json"""
                parts = self.path.split("?")[0].strip("/").split("/")
                wanted = parts[2:3] == ["resolve"] and parts[-1] == "config.json"
                config = configs.get("/".join(parts[:2])) if wanted else None
                data = json.dumps(config).encode() if config is not None else b""
                self.send_response(200 if config is not None else 404)
                if config is None:
                    self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._record(body)
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    repo = json.loads(body)
                    recorded.repos.append(repo)
                    name = f"{repo.get('organization') or 'user'}/{repo['name']}"
                    self._reply(200, {"url": f"{server.url}/{name}", "name": name, "id": "1"})
                elif path == "/api/validate-yaml":  # the card's metadata header, checked before a commit
                    recorded.cards.append(json.loads(body))
                    self._reply(200, {})
                elif path.endswith("/preupload/main"):
                    files = json.loads(body)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    self._reply(200, {"files": modes})
                elif path.endswith("/commit/main") and refuse_commits:
                    self._reply(403, {"error": f"cannot commit for {self.headers.get('Authorization')}"})
                elif path.endswith("/commit/main"):
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            recorded.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    repo = path.removeprefix("/api/models/").removesuffix("/commit/main")
                    self._reply(200, {"commitUrl": f"{server.url}/{repo}/commit/{'0' * 40}", "commitOid": "0" * 40})
                else:
                    self._reply(404, {"error": "not found"})

            def _record(self, body: bytes) -> None:
                recorded.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body.decode("latin-1"),
                    }
                )

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = self
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
