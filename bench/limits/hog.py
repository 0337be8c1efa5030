# One never-reading peer: N connections, each pipelining 3000 GET /metrics; prints how many are still open after 8 s.
import socket, sys, time, os
path, n = sys.argv[1], int(sys.argv[2])
req = b"GET /metrics HTTP/1.1\r\n\r\n" * 3000
socks = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.setblocking(False)
        try: s.send(req)
        except BlockingIOError: pass
        socks.append(s)
    except OSError:
        s.close()
time.sleep(8)
alive = 0
for s in socks:
    try:
        d = s.recv(1, socket.MSG_PEEK)
        if d: alive += 1
    except BlockingIOError:
        alive += 1
    except OSError:
        pass
print("opened", len(socks), "alive", alive, flush=True)
time.sleep(2)
