#!/usr/bin/env python3
"""The gateway suite's upstream: answers every request with the request headers it saw, as JSON.

It plays the application's part of an owned grant (SPEC 6): tokend granted the permission on the
gateway's word that the object belongs to the token's user, and says so with X-Tokend-Grant: owned.
Given --owner WORKSPACE=USER (the application's own data), a request with an owned grant on a
workspace path is refused (403) unless that workspace belongs to X-Tokend-User-Id.

Binds 127.0.0.1 on a free port (port 0), writes that port to --port-file once it listens, and
appends one JSON line per request to --log, so a test can prove that a header never arrived.
HTTP/1.1 with keep-alive, so nginx's upstream keepalive pool works against it.
"""

import argparse
import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo-upstream"
    # Headers and body leave in two writes: without TCP_NODELAY, Nagle's algorithm holds the
    # second back until the first is acknowledged, and a delayed ACK makes that 40 ms.
    disable_nagle_algorithm = True
    log_file = None

    owners = {}

    def _owned_grant_confirmed(self):
        """True unless an owned grant names a workspace this user does not own."""
        grants = self.headers.get_all("X-Tokend-Grant") or []
        if "owned" not in grants:
            return True
        match = re.search(r"/workspaces/([0-9a-f-]{36})(?:$|[/?])", self.path)
        user = self.headers.get("X-Tokend-User-Id")
        return bool(match and user and self.owners.get(match.group(1)) == user)

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if not self._owned_grant_confirmed():
            out = json.dumps({"message": "Forbidden.",
                              "detail": "owned grant not confirmed: not this user's workspace"}).encode()
            if self.log_file is not None:
                self.log_file.write(json.dumps({"method": self.command, "path": self.path,
                                                "refused": "owned"}) + "\n")
                self.log_file.flush()
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)
            return
        seen = {
            "method": self.command,
            "path": self.path,
            "body_bytes": len(body),
            # Every field as received, in order, duplicates kept: a forged header that slipped
            # through next to the gateway's own would show up as a second value.
            "headers": [[name.lower(), value] for name, value in self.headers.items()],
        }
        out = json.dumps(seen).encode()
        if self.log_file is not None:
            self.log_file.write(out.decode() + "\n")
            self.log_file.flush()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", required=True, help="written with the port once listening")
    parser.add_argument("--log", help="append one JSON line per request here")
    parser.add_argument("--owner", action="append", default=[], metavar="WORKSPACE=USER",
                        help="the application's data: USER (a uuid) owns WORKSPACE (repeatable)")
    args = parser.parse_args()
    for pair in args.owner:
        workspace, _, user = pair.partition("=")
        EchoHandler.owners[workspace] = user

    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    server.daemon_threads = True
    if args.log:
        EchoHandler.log_file = open(args.log, "a", encoding="utf-8")
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{server.server_address[1]}\n")
    os.rename(tmp, args.port_file)  # readers never see a half-written port
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
