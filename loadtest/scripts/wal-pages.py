#!/usr/bin/env python3
"""WAL pages per commit of the embedded store's hot write path, modelled.

The tables a send and an ack touch (groups, entries, cursors, as in
crates/hush-store/src/sqlite/schema.rs), the workload's shape (GROUPS groups
of 10 members, random 16-byte client ids, BATCH sends and ACKS cursor acks
per commit) and SQLite's own WAL: prints the frames (4 KiB pages) each
commit appended. A schema change's page cost, in a minute, before making it:

    python3 loadtest/scripts/wal-pages.py                  # today's layout
    python3 loadtest/scripts/wal-pages.py --without-rowid  # entries, cursors WITHOUT ROWID
    python3 loadtest/scripts/wal-pages.py --batch 16 --acks 0
"""
import argparse
import os
import random
import sqlite3
import tempfile

FRAME = 4096 + 24

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--groups", type=int, default=100)
ap.add_argument("--batch", type=int, default=4, help="sends per commit")
ap.add_argument("--acks", type=int, default=7, help="cursor acks per commit")
ap.add_argument("--commits", type=int, default=2000)
ap.add_argument("--message-bytes", type=int, default=230)
ap.add_argument("--without-rowid", action="store_true")
a = ap.parse_args()

wr = " WITHOUT ROWID" if a.without_rowid else ""
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "model.sqlite")
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=OFF")
    c.execute("PRAGMA wal_autocheckpoint=0")  # count every frame
    c.executescript(f"""
        CREATE TABLE groups (group_id BLOB PRIMARY KEY NOT NULL, epoch INTEGER NOT NULL,
            head_seq INTEGER NOT NULL, lease_owner TEXT NOT NULL, lease_token INTEGER NOT NULL,
            lease_expires_ms INTEGER NOT NULL);
        CREATE TABLE entries (group_id BLOB NOT NULL, seq INTEGER NOT NULL, kind INTEGER NOT NULL,
            epoch INTEGER NOT NULL, sender TEXT NOT NULL, client_msg_id BLOB NOT NULL,
            message BLOB NOT NULL, server_time_ms INTEGER NOT NULL,
            PRIMARY KEY (group_id, seq), UNIQUE (group_id, client_msg_id)){wr};
        CREATE TABLE cursors (device_id TEXT NOT NULL, group_id BLOB NOT NULL,
            seq INTEGER NOT NULL, PRIMARY KEY (device_id, group_id)){wr};
    """)
    rng = random.Random(1)
    gids = [rng.randbytes(32) for _ in range(a.groups)]
    for g in gids:
        c.execute("INSERT INTO groups VALUES (?, 1, 0, 'n1', 1, 0)", (g,))
    devices = [(f"user{i}-{rng.randbytes(8).hex()}", gids[i // 10]) for i in range(10 * a.groups)]
    for dev, g in devices:
        c.execute("INSERT INTO cursors VALUES (?, ?, 0)", (dev, g))

    def frames():
        return (os.path.getsize(path + "-wal") - 32) // FRAME

    before = frames()
    for i in range(a.commits):
        c.execute("BEGIN IMMEDIATE")
        for _ in range(a.batch):
            g = rng.choice(gids)
            (seq,) = c.execute(
                "UPDATE groups SET head_seq = head_seq + 1 WHERE group_id = ?1 AND lease_token = 1"
                " RETURNING head_seq", (g,)).fetchone()
            c.execute(
                "INSERT INTO entries VALUES (?1, ?2, 1, 1, 'user1/user1-1', ?3, ?4, 5)"
                " ON CONFLICT (group_id, client_msg_id) DO NOTHING",
                (g, seq, rng.randbytes(16), rng.randbytes(a.message_bytes)))
        for _ in range(a.acks):
            dev, g = rng.choice(devices)
            c.execute(
                "INSERT INTO cursors VALUES (?1, ?2, ?3) ON CONFLICT (device_id, group_id)"
                " DO UPDATE SET seq = MAX(seq, excluded.seq)", (dev, g, i))
        c.execute("COMMIT")
    per_commit = (frames() - before) / a.commits
    per_send = per_commit / a.batch if a.batch else float("nan")
    print(f"{per_commit:.1f} WAL frames per commit ({per_send:.2f} per send), "
          f"{a.batch} sends and {a.acks} acks per commit over {a.groups} groups"
          f"{', WITHOUT ROWID' if a.without_rowid else ''}")
