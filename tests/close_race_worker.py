"""Reads racing ``close()``: reader threads read a checkpoint while the main thread closes it and a
recycler thread opens and closes other files, so that any descriptor closed under a reader is
reused at once for a file of other bytes.

Every read must give the checkpoint's values or raise StorageError ("the checkpoint is closed").
Prints one JSON line: counts of good reads, refusals, wrong values and other errors.

Usage: python close_race_worker.py PREFIX DECOY_DIR MMAP(0|1) ROUNDS
"""

import json
import os
import random
import sys
import threading

import numpy as np

import tf2flax
from tf2flax.errors import StorageError

prefix, decoys, use_mmap, rounds = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
sys.setswitchinterval(1e-6)   # switch threads as often as the interpreter can: widest race window
expected = np.arange(1 << 16, dtype=np.float32)
counts = {"good": 0, "closed": 0, "wrong": 0, "other": []}
lock = threading.Lock()
stop_recycling = threading.Event()


def recycle():
    names = [os.path.join(decoys, n) for n in sorted(os.listdir(decoys))]
    while not stop_recycling.is_set():
        fds = [os.open(n, os.O_RDONLY) for n in names]
        for fd in fds:
            os.close(fd)


def reader(ckpt, seed):
    rng = random.Random(seed)
    for _ in range(50):
        start = rng.randrange(0, 1 << 16)
        try:
            got = np.array(ckpt.read("t", (slice(start, min(1 << 16, start + 4096)),)))
        except StorageError as e:
            with lock:
                if "the checkpoint is closed" in str(e):
                    counts["closed"] += 1
                else:
                    counts["other"].append(f"{type(e).__name__}: {e}")
            return
        except Exception as e:
            with lock:
                counts["other"].append(f"{type(e).__name__}: {e}")
            return
        with lock:
            if np.array_equal(got, expected[start:start + 4096]):
                counts["good"] += 1
            else:
                counts["wrong"] += 1


recycler = threading.Thread(target=recycle)
recycler.start()
try:
    for r in range(rounds):
        ckpt = tf2flax.open_checkpoint(prefix, verify_checksums=False, mmap=use_mmap)
        threads = [threading.Thread(target=reader, args=(ckpt, r * 10 + i)) for i in range(4)]
        for t in threads:
            t.start()
        ckpt.close()
        for t in threads:
            t.join()
finally:
    stop_recycling.set()
    recycler.join()
counts["other"] = counts["other"][:5]
print("RESULT" + json.dumps(counts))
