"""A small stand-in for an AI agent: it reads, writes, runs a tool, talks to a
local service and tries one thing a sandbox must refuse. `make demo` runs it
under `alcub3 run` so each of these shows up as a kernel event."""
import ctypes
import os
import socket
import subprocess
import threading

workspace = os.getcwd()

# A "tool call": run a program and keep its output.
uname = subprocess.run(["uname", "-sr"], capture_output=True, text=True).stdout.strip()

# Write a report into the workspace, then rename it into place.
with open(os.path.join(workspace, "report.tmp"), "w") as f:
    f.write(f"kernel: {uname}\n" * 100)
os.rename(os.path.join(workspace, "report.tmp"), os.path.join(workspace, "report.txt"))

# Talk to a local service (a listener of its own on loopback).
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.bind(("127.0.0.1", 0))
server.listen(1)
port = server.getsockname()[1]

def serve():
    conn, _ = server.accept()
    conn.sendall(b"hello agent\n")
    conn.close()

thread = threading.Thread(target=serve)
thread.start()
client = socket.create_connection(("127.0.0.1", port))
reply = client.recv(64)
client.close()
thread.join()

# Something no agent should do: the sandbox's seccomp filter refuses it.
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER
    escaped = "unshare succeeded (not expected)"
else:
    escaped = f"unshare refused: {os.strerror(ctypes.get_errno())}"

print(f"agent: ran uname ({uname}), wrote report.txt, got {reply!r} from port {port}, {escaped}")
