#!/usr/bin/env python3
"""The audit's rechain.py forgery (reviews/security-audit.md, M1), for the tests.

audit-rechain.py DB SEQ DETAILS_JSON: rewrites record SEQ's details_json, then
recomputes every record's prev_hash and SHA-256 hash with the documented
netstrings (docs/store.md), as anyone with write access to the file can. It
cannot recompute a MAC: that needs the audit key, which is not in the database.
With --strip it also removes every MAC and re-hashes all records the unkeyed
way, so the log reads as one written before keys.
"""
import hashlib
import sqlite3
import sys

args = [a for a in sys.argv[1:] if a != "--strip"]
strip = "--strip" in sys.argv
path, target, details = args[0], int(args[1]), args[2]
db = sqlite3.connect(path)
db.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
db.execute("UPDATE audit_log SET details_json = ? WHERE seq = ?", (details, target))
if strip:
    db.execute("UPDATE audit_log SET mac = NULL")
prev = "0" * 64
rows = db.execute("SELECT seq, time_ns, actor, action, subject, details_json, requester_json, mac "
                  "FROM audit_log ORDER BY seq").fetchall()
for seq, time_ns, actor, action, subject, details_json, requester_json, mac in rows:
    if mac is None:
        fields = ["alcub3-audit-v1", str(seq), str(time_ns), actor, action, subject, details_json, prev]
    else:
        fields = ["alcub3-audit-v2", str(seq), str(time_ns), actor, action, subject, details_json, requester_json, prev]
    message = b"".join(b"%d:%s," % (len(f.encode()), f.encode()) for f in fields)
    digest = hashlib.sha256(message).hexdigest()
    db.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq))
    prev = digest
db.commit()
print(f"re-chained {len(rows)} records, record {target} rewritten")
