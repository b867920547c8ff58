"""An LSUN-style LMDB at scale: --images small webp images (32x32, smooth random colour fields, made here, not
shipped) written to an LMDB and, byte for byte, to a folder; then

- the decode into the cache (a fresh cache dir, 2 worker processes), LMDB against folder, alternating --rounds;
- the peak anonymous memory (RssAnon, polled every 50 ms) of a `ddpm train` process that builds the LMDB's cache
  and trains a few steps, at --small and --images entries: the keys are walked with a cursor, never held, so
  the peak should not grow with the entries.

    python -m benchmarks.data.lmdb --images 100000 --small 10000 --work /tmp/lmdb_bench --json lmdb.json

One run at a time, never beside another benchmark (2 cores). Needs lmdb (pip install 'ddpm-tool[lsun]').
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import parse


def make(work: Path, n: int, small: int, size: int = 32) -> None:
    import lmdb

    rng = np.random.default_rng(0)
    folder = work / "folder"
    envs = {k: lmdb.open(str(work / k), map_size=1 << 34) for k in ("big", "small")}
    txns = {k: e.begin(write=True) for k, e in envs.items()}
    t0 = time.perf_counter()
    for i in range(n):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # a smooth field: webp sizes like photos'
        im = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="WEBP", quality=90)
        data, key = buf.getvalue(), f"{i:08d}".encode()
        txns["big"].put(key, data)
        if i < small:
            txns["small"].put(key, data)
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:08d}.webp").write_bytes(data)
        if (i + 1) % 10000 == 0:
            for k in txns:
                txns[k].commit()
                txns[k] = envs[k].begin(write=True)
    for k in txns:
        txns[k].commit()
        envs[k].close()
    print(f"made {n:,} webp images ({(work / 'big' / 'data.mdb').stat().st_size / 2**20:.0f} MiB LMDB) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)


def decode_rate(src: Path, cache: Path) -> float:
    """Images per second of a cold cache build of ``src`` at 3 x 32 x 32 in its own process."""
    shutil.rmtree(cache, ignore_errors=True)
    code = ("import sys, time; from ddpm.data.sources import load_data; t0 = time.perf_counter(); "
            f"d = load_data({str(src)!r}, channels=3, image_size=32, cache_dir={str(cache)!r}); "
            "print(len(d) / (time.perf_counter() - t0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    shutil.rmtree(cache, ignore_errors=True)
    return float(out.strip().splitlines()[-1])


def peak_anon(args: list, env: dict) -> float:
    """The peak RssAnon (MiB) of the process running ``args`` (its own memory, not its workers')."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def poll():
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=poll)
    t.start()
    _, err = proc.communicate()
    t.join()
    if proc.returncode:
        raise SystemExit(err[-2000:])
    return peak[0] / 1024


SMOKE = {"images": 64, "small": 16, "rounds": 1, "work": "lmdb-smoke"}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default="lmdb_bench", help="where the LMDBs, the folder and the caches go")
    ap.add_argument("--keep", action="store_true", help="keep --work afterwards")
    ap.add_argument("--json", default=None)
    args = parse(ap, SMOKE)
    work = Path(args.work)
    if work.exists() and any(work.iterdir()):
        ap.error(f"{work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    res = {"images": args.images, "small": args.small}
    try:
        make(work, args.images, args.small)
        rates = {"lmdb": [], "folder": []}
        for r in range(args.rounds):
            for kind in (("lmdb", "folder") if r % 2 == 0 else ("folder", "lmdb")):
                rate = decode_rate(work / ("big" if kind == "lmdb" else "folder"), work / "cache")
                rates[kind].append(rate)
                print(f"round {r + 1}: {kind:<6} {rate:,.0f} images/s into the cache", flush=True)
        res["decode"] = {k: {"rounds": v, "median": float(np.median(v))} for k, v in rates.items()}
        res["decode_ratio_lmdb_over_folder"] = float(np.median(np.array(rates["lmdb"]) / np.array(rates["folder"])))
        env = {**os.environ, "DDPM_CACHE_DIR": str(work / "cache")}
        res["peak_rss_anon_mib"] = {}
        for name, db in (("small", work / "small"), ("big", work / "big")):
            n = args.small if name == "small" else args.images
            cmd = [sys.executable, "-m", "ddpm", "train", "--data", str(db), "--preset", "tiny", "--out",
                   str(work / f"run_{name}"), "--steps", "5", "--batch-size", "16", "--quiet", "--sample-every", "0"]
            mib = peak_anon(cmd, env)
            res["peak_rss_anon_mib"][str(n)] = mib
            print(f"ddpm train on the LMDB of {n:,} (its cache built in the same process): peak RssAnon {mib:.0f} MiB",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
