#!/usr/bin/env python3
"""TCP <-> unix socket forwarder, so HTTP tools that speak only TCP
(schemathesis) can reach the splitvm API socket.

Usage: uds_bridge.py UNIX_SOCKET [PORT_FILE]
Listens on 127.0.0.1 on a free port and writes the port to PORT_FILE (or
stdout) once it listens. Each TCP connection gets its own unix connection;
bytes are pumped both ways until either side closes.
"""
import socket
import sys
import threading


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve(conn, path):
    up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        up.connect(path)
    except OSError as e:
        print(f"uds_bridge: connect {path}: {e}", file=sys.stderr)
        conn.close()
        return
    t = threading.Thread(target=pump, args=(up, conn), daemon=True)
    t.start()
    pump(conn, up)
    t.join()
    conn.close()
    up.close()


def main():
    path = sys.argv[1]
    lsn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(64)
    port = lsn.getsockname()[1]
    if len(sys.argv) > 2:
        tmp = sys.argv[2] + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        import os
        os.rename(tmp, sys.argv[2])
    else:
        print(port, flush=True)
    while True:
        conn, _ = lsn.accept()
        threading.Thread(target=serve, args=(conn, path), daemon=True).start()


if __name__ == "__main__":
    main()
