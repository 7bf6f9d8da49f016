#!/bin/sh
# Regenerates data/kernel/MANIFEST and data/kernel/corpus.gz from Debian's
# linux-source-6.1 package (GPL-2.0; see data/kernel/README).
#
#   apt-get download linux-source-6.1
#   sh data/kernel/extract.sh linux-source-6.1_*.deb     # from the repository root
#
# Deterministic selection, per subsystem directory: every `.c` file of 2 to
# 32 KiB (smaller files are mostly boilerplate; the larger ones include the
# generated tables and firmware blobs), skipping files of which more than 20 %
# of the bytes are digits (tables), in order of the SHA-256 of their path.
# The first files go to the held-out set until it holds HELDOUT bytes, the
# following ones to the training set until it holds TRAIN bytes. Subsystems
# no trainer has (fs/, mm/, kernel/) only give held-out files ("unseen").
#
# MANIFEST: one line per file, `<set> <specialty> <bytes> <path>`, with
# <set> `train` or `heldout`, <path> relative to the Linux tree. corpus.gz is
# the files' bytes concatenated in MANIFEST order, gzip -9 without name or
# time stamp, so the same package gives the same bytes.
set -eu
DEB=${1:?usage: extract.sh linux-source-6.1_VERSION_all.deb}
OUT=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$TMP" ./usr/src/linux-source-6.1.tar.xz
tar -xJf "$TMP/usr/src/linux-source-6.1.tar.xz" -C "$TMP" \
    linux-source-6.1/net linux-source-6.1/drivers/gpu/drm linux-source-6.1/security \
    linux-source-6.1/fs linux-source-6.1/mm linux-source-6.1/kernel
python3 - "$TMP/linux-source-6.1" "$OUT" <<'PY'
import gzip, hashlib, os, sys
root, out = sys.argv[1], sys.argv[2]
TRAIN, HELDOUT = 300_000, 48_000
plan = [  # (specialty, directories, train budget, held-out budget)
    ("networking", ["net"], TRAIN, HELDOUT),
    ("graphics", ["drivers/gpu/drm"], TRAIN, HELDOUT),
    ("security", ["security"], TRAIN, HELDOUT),
    ("unseen", ["fs", "mm", "kernel"], 0, HELDOUT),
]
lines, blob = [], bytearray()
for specialty, dirs, train_budget, heldout_budget in plan:
    files = []
    for d in dirs:
        for base, _, names in os.walk(os.path.join(root, d)):
            for n in names:
                if not n.endswith(".c"):
                    continue
                p = os.path.join(base, n)
                rel = os.path.relpath(p, root)
                data = open(p, "rb").read()
                if not 2048 <= len(data) <= 32768:
                    continue
                if sum(48 <= b <= 57 for b in data) > 0.2 * len(data):
                    continue
                files.append((hashlib.sha256(rel.encode()).hexdigest(), rel, data))
    files.sort()
    held = train = 0
    for _, rel, data in files:
        if held < heldout_budget:
            kind, held = "heldout", held + len(data)
        elif train < train_budget:
            kind, train = "train", train + len(data)
        else:
            break
        lines.append(f"{kind} {specialty} {len(data)} {rel}")
        blob += data
with open(os.path.join(out, "MANIFEST"), "w") as f:
    f.write("\n".join(lines) + "\n")
with open(os.path.join(out, "corpus.gz"), "wb") as f:
    with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as g:
        g.write(bytes(blob))
print(f"{len(lines)} files, {len(blob)} bytes", file=sys.stderr)
PY
