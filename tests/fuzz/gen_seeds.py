#!/usr/bin/env python3
# Writes the seed corpora of the fuzz targets that have no hand-written seeds (tests/fuzz/corpus/).
# The binary ones follow the layouts in verifier/records.h and shm/cache.h; rerun after a change.
import os
import struct
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
U1 = bytes.fromhex("3f2504e04f8941d39a0c0305e82c3301")
U2 = bytes.fromhex("aaaaaaaa00004000800000000000000a")


def write(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def s16(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<H", len(b)) + b


def lst(items):
    return struct.pack("<H", len(items)) + b"".join(s16(i) for i in items)


def user(username, roles, status=0):
    return b"U\x01" + U1 + s16(username) + lst(roles) + bytes([status]) + struct.pack("<qq", 1700000000, 1700000001)


def token(tid, kind, name, scopes, allow):
    return (b"T\x01" + s16(tid) + bytes(range(32)) + U1 + bytes([kind]) + s16(name) + lst(scopes) + lst(allow) +
            struct.pack("<qqqqq", 1700000000, 1700604800, 604800, 0, 1700000000))


# token
for n, t in {"valid": "abcdefghij-0123456789abcdefghijkl", "no_hyphen": "abcdefghij0123456789abcdefghijkl",
             "short": "abc-def", "two_hyphens": "abcdefghij-0123456789-bcdefghijkl",
             "non_alnum": "abcdefgh_j-0123456789abcdefghijkl"}.items():
    write("token", n, t)
# duration
for i, d in enumerate(["90s", "15m", "24h", "1h30m", "30d", "1y", "1.5h", "-1h", "0", "876600h", "100ms",
                       "5\u00b5s", "2h45m30.5s", "+3d", "1x", ""]):
    write("duration", "d%02d" % i, d)
# scopes (newline-separated values, each a comma-separated list)
for n, s in {"all": "coder:all", "pair_and_wild": "workspace:read,template:*", "aliases": "all\napplication_connect",
             "composite": "coder:workspaces.access\ncoder:apikeys.manage_self", "roles": "owner\nuser-admin\nmember",
             "bad": "workspace:fly", "star": "*:*", "blanks": " workspace:read , ,api_key:*"}.items():
    write("scopes", n, s)
# allow lists
for n, s in {"any": "*:*", "type": "workspace:*", "entries": "workspace:3f2504e0-4f89-41d3-9a0c-0305e82c3301\ntemplate:*",
             "absorb": "workspace:*,workspace:3f2504e0-4f89-41d3-9a0c-0305e82c3301", "bad_uuid": "workspace:123",
             "bad_type": "nothing:*"}.items():
    write("allow_list", n, s)
# records
write("records", "user_member", user("mia", []))
write("records", "user_owner", user("boss", ["owner", "user-admin"], 1))
write("records", "token_api", token("abcdefghij", 0, "all", ["coder:all"], ["*:*"]))
write("records", "token_narrow", token("ABCDEFGHIJ", 1, "", ["workspace:read", "template:*"],
                                       ["workspace:3f2504e0-4f89-41d3-9a0c-0305e82c3301", "template:*"]))
write("records", "token_bad_scope", token("abcdefghij", 0, "x", ["workspace:fly"], []))


# shm: flags (all fixes, sealed), slot count 2^3, header (fixed by flags), then one slot repeated.
def entry(tid, flags, allow):
    e = tid.encode() + bytes([0, flags]) + U1 + bytes([len(allow), 4, 0, 0]) + bytes(range(32))
    e += struct.pack("<qqq", 1700604800, 604800, 0)
    e += struct.pack("<4Q", *([0xFFFFFFFFFFFFFFFF] * 4)) * 3
    e += b"boss" + bytes(28)
    for t, any_id, uid in allow:
        e += struct.pack("<HBB", t, any_id, 0) + uid
    e += bytes(20 * (7 - len(allow))) + bytes(12)
    assert len(e) == 368, len(e)
    return e


def slot(e, seq=2):
    return struct.pack("<QII", seq, 0, 0) + e


hdr = bytes(128)
write("shm", "one_token", bytes([0x3F, 3]) + hdr + slot(entry("abcdefghij", 1, [(0xFFFF, 1, bytes(16))])) + b"abcdefghij")
write("shm", "allow_list", bytes([0xBF, 4]) + hdr + slot(entry("ABCDEFGHIJ", 1, [(3, 0, U1), (5, 1, bytes(16))])))
write("shm", "locked_slot", bytes([0x3F, 3]) + hdr + slot(entry("abcdefghij", 3, []), seq=7))
write("shm", "bad_magic", bytes([0x3E, 3]) + b"XOKENDSH" + bytes(120))
write("shm", "unsealed", bytes([0x7F, 3]) + hdr)
# decide: mode byte, then fields (see decide_fuzz.cpp); zeros and ones both decide something.
write("decide", "entry_zero", bytes([0]) + bytes(400))
write("decide", "entry_ones", bytes([0]) + bytes([0xFF]) * 400)
write("decide", "both_zero", bytes([1]) + bytes(300))
write("decide", "both_mixed", bytes([1]) + bytes(range(256)) + bytes(range(100)))
write("decide", "query_text", bytes([0]) + bytes(368) + b"\x01" + bytes(32) + bytes(8) + b"\x80workspace:read\nworkspace:"
      + b"3f2504e0-4f89-41d3-9a0c-0305e82c3301\n3f2504e0-4f89-41d3-9a0c-0305e82c3301")
# management: caller byte (0 owner, 1 member, 2 narrow, 3 bogus), "METHOD path", '\n', body.
for n, (caller, line, body) in {
        # codersdk.CreateTokenRequest as Coder's Go client marshals it: lifetime in nanoseconds.
        "create_token": (1, "POST users/me/keys/tokens", '{"lifetime":3600000000000,"scopes":["workspace:read"],"token_name":"x"}'),
        "create_allow_objects": (1, "POST users/me/keys/tokens", '{"lifetime":0,"token_name":"","allow_list":[{"type":"workspace","id":"3f2504e0-4f89-41d3-9a0c-0305e82c3301"},{"type":"*","id":"*"},"template:*"]}'),
        "delete": (1, "DELETE users/me/keys/AAAAAAAAAA", ""),
        "create_for_other": (0, "POST users/mia/keys/tokens", '{"allow_list":["workspace:*"]}'),
        "session": (1, "POST users/me/keys", '{"login_type":"github"}'),
        "list": (0, "GET users/me/keys/tokens?include_all=true&include_expired=1", ""),
        "view": (1, "GET users/me/keys/tokens/all", ""),
        "users": (0, "POST users", '{"username":"zed","roles":["user-admin"]}'),
        "roles": (0, "PUT users/mia/roles", '{"roles":["owner"]}'),
        "suspend": (0, "PUT users/mia/status/suspend", ""),
        "expire": (1, "PUT users/me/keys/AAAAAAAAAA/expire", ""),
        "config": (2, "GET users/me/keys/tokens/tokenconfig", ""),
        "scopes": (3, "GET auth/scopes", ""),
        # Findings 1 of docs/security.md: a non-string field used to end the daemon.
        "login_type_number": (1, "POST users/me/keys", '{"login_type":5}'),
        "username_number": (0, "POST users", '{"username":7,"roles":["member"]}'),
        "name_escape": (1, "POST users/me/keys/tokens", '{"token_name":"\\u001b[31mred"}'),
}.items():
    write("management", n, bytes([caller]) + (line + "\n" + body).encode())
print("seeds written under", root, file=sys.stderr)
