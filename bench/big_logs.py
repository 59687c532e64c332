"""``bgrunner logs`` on a 1 GB log: the fast paths against ``grep -c`` and ``tail`` over the same files.

    python bench/big_logs.py [--dir DIR] [--gb 1.0] [--keep] [--gzip] [--runs 5]

Generates (or reuses, if ``DIR`` holds a complete one) ~1 GB of log lines in bgrunner's
format, ~3 M lines over five files (``.4`` ... ``.1`` and the current one, time-ordered,
three days up to now), with one job (``7777777``) whose 60 lines are spread over the
middle file. Then times, each as a fresh process (median of ``--runs``, page cache warm):

* ``bgrunner logs --since 10m -n 50`` (goal <= 0.5 s): bisects the newest file only;
* ``bgrunner logs 7777777`` (goal <= 2 s): a byte search for ``"7777777"`` over every file,
  parsing only the lines holding it;
* ``grep -c '"job_id": "7777777"'`` over the same files, and ``tail -n 50`` of the newest:
  the baselines; ``python -c pass`` and ``bgrunner logs -n 0``: the start-up floor;
* a ``--grep`` and a ``--level error`` over the whole log (byte pre-checks, then the
  matching lines parsed), the grep one beside ``grep -c``.

``--gzip`` also gzips ``.4`` and ``.3`` (as ``log_compress`` would) and times the job
search again: a ``.gz`` file is streamed whole. The folder is removed at the end
unless ``--keep``; the disk must have room for it (checked first).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import sandbox  # noqa: E402 -- after the sys.path line above

MAIN = "background_jobs.log"
FILES = 5
BYTES_PER_LINE = 350  # about: the line template below with its note
SPAN = 3 * 86400.0
MIDDLE_JOB = "7777777"  # never one of the ordinary ids (100000 + line // 3)
MIDDLE_LINES = 60
LINE = ('{"timestamp": "%s", "level": "%s", "event": "%s", "job_id": "%s", "target": "shop.jobs:%s", '
        '"method": "%s", "attempt": %d, "pid": %d, "duration_ms": %d, "note": "%s"}\n')
TARGETS = ("Mailer", "Report", "Invoice", "Thumbnail")
NOTE = "order %07d of customer %05d: " + "lorem ipsum dolor sit amet " * 5


def stamp(t: float, cache: dict[int, str] = {}) -> str:  # noqa: B006 -- a deliberate memo of one second
    whole = int(t)
    head = cache.get(whole)
    if head is None:
        cache.clear()
        head = cache[whole] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{head}.{int((t - whole) * 1e6):06d}Z"


def line(i: int, t: float, total: int) -> str:
    kind = i % 3
    event = ("job_queued", "job_started", "job_completed")[kind]
    level = "error" if i % 997 == 0 else "warning" if i % 101 == 0 else "info"
    job = str(100000 + i // 3)
    lo, hi = total // 2 - total // 60, total // 2 + total // 60
    if lo <= i < hi and (i - lo) % ((hi - lo) // MIDDLE_LINES) == 0:
        job, event = MIDDLE_JOB, "email_sent"
    return LINE % (stamp(t), level, event, job, TARGETS[i % 4], "run", 1, 1000 + i % 30000, i % 5000,
                   NOTE % (i, i % 99999))


def generate(folder: Path, gb: float) -> dict[str, float]:
    total = int(gb * 1e9 / BYTES_PER_LINE)
    end = time.time()
    start = end - SPAN
    step = SPAN / total
    per_file = total // FILES + 1
    began = time.perf_counter()
    for n in range(FILES):
        name = MAIN if n == FILES - 1 else f"{MAIN}.{FILES - 1 - n}"
        with open(folder / name, "w", buffering=16 << 20) as f:
            lo, hi = n * per_file, min(total, (n + 1) * per_file)
            for block in range(lo, hi, 20000):
                f.write("".join(line(i, start + i * step, total) for i in range(block, min(hi, block + 20000))))
        os.chmod(folder / name, 0o600)
        print(f"  wrote {name}: {os.path.getsize(folder / name) / 1e6:.0f} MB", flush=True)
    meta = {"lines": total, "gb": gb, "end": end, "seconds": time.perf_counter() - began, "job": MIDDLE_JOB}
    (folder / "bench.json").write_text(json.dumps(meta))
    return meta


def top_up(folder: Path, meta: dict[str, float]) -> None:
    """Lines for the last 15 minutes, so that --since 10m has its 50 (a reused log ends in the past)."""
    now = time.time()
    start = max(float(meta["end"]), now - 900)
    count = 5000
    step = (now - start) / count
    with open(folder / MAIN, "a") as f:
        f.write("".join(line(7 + 3 * i, start + (i + 1) * step, 1) for i in range(count)))
    meta["end"] = now
    (folder / "bench.json").write_text(json.dumps(meta))


def timed(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, float, int]:
    """(median, min) seconds of ``cmd`` as a fresh process, and the lines it printed."""
    times, out = [], b""
    for _ in range(runs):
        began = time.perf_counter()
        result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True)
        times.append(time.perf_counter() - began)
        if result.returncode not in (0, 1):  # grep -c exits 1 when it counts 0
            raise SystemExit(f"{cmd} failed: {result.stderr.decode()}")
        out = result.stdout
    return statistics.median(times), min(times), out.count(b"\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bgrunner-big-logs")
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="leave the generated log in place")
    parser.add_argument("--gzip", action="store_true", help="also time the job search with .4 and .3 gzipped")
    args = parser.parse_args()
    folder: Path = args.dir
    meta_path = folder / "bench.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if meta is None or meta.get("gb") != args.gb or meta.get("job") != MIDDLE_JOB or not (folder / MAIN).exists():
        need = args.gb * 1e9 * (1.6 if args.gzip else 1.1)
        free = shutil.disk_usage(folder.parent if folder.parent.exists() else "/").free
        if free < need:
            print(f"not enough disk: {free / 1e9:.1f} GB free at {folder.parent}, {need / 1e9:.1f} GB needed")
            return 1
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o700, parents=True)
        print(f"generating {args.gb:g} GB in {folder} ({free / 1e9:.0f} GB free) ...", flush=True)
        meta = generate(folder, args.gb)
        print(f"  {meta['lines']:,} lines in {meta['seconds']:.0f} s")
    else:
        print(f"reusing {folder} ({meta['lines']:,} lines)")
    top_up(folder, meta)
    files = [str(folder / (f"{MAIN}.{n}" if n else MAIN)) for n in range(FILES - 1, -1, -1)]
    size = sum(os.path.getsize(p) for p in files)
    env = sandbox()
    env["BGRUNNER_LOG_DIR"] = str(folder)
    cli = [sys.executable, "-m", "bgrunner", "logs", "--json"]
    for p in files:  # warm the page cache: every figure below is of a warm cache
        subprocess.run(["cat", p], stdout=subprocess.DEVNULL, check=True)

    rows: list[tuple[str, tuple[float, float, int], str]] = []

    def bench(label: str, cmd: list[str], goal: str = "") -> None:
        rows.append((label, timed(cmd, env, args.runs), goal))
        print(f"  {label:<48} {rows[-1][1][0]:7.3f} s", flush=True)

    print(f"timing on {size / 1e9:.2f} GB, {len(files)} files, median of {args.runs} runs:")
    bench("python -c pass", [sys.executable, "-c", "pass"])
    bench("bgrunner logs -n 0 (start-up)", [*cli, "-n", "0"])
    bench("bgrunner logs --since 10m -n 50", [*cli, "--since", "10m", "-n", "50"], "<= 0.5 s")
    bench("tail -n 50 (newest file)", ["tail", "-n", "50", files[-1]])
    bench(f"bgrunner logs {MIDDLE_JOB}", [*cli, MIDDLE_JOB], "<= 2 s")
    needle = f'"job_id": "{MIDDLE_JOB}"'
    bench(f"grep -c '{needle}' (all files)", ["grep", "-c", needle, *files])
    bench(f"bgrunner logs {MIDDLE_JOB} --level warning -n 5", [*cli, MIDDLE_JOB, "--level", "warning", "-n", "5"])
    bench("bgrunner logs --grep 'order 1500000 '", [*cli, "--grep", "order 1500000 "])
    bench("grep -c 'order 1500000 ' (all files)", ["grep", "-c", "order 1500000 ", *files])
    bench("bgrunner logs --level error", [*cli, "--level", "error"])
    if args.gzip:
        for n in (4, 3):
            plain = folder / f"{MAIN}.{n}"
            with open(plain, "rb") as src, gzip.open(f"{plain}.gz", "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
            os.chmod(f"{plain}.gz", 0o600)
            plain.unlink()
        bench(f"bgrunner logs {MIDDLE_JOB} (.4, .3 gzipped)", [*cli, MIDDLE_JOB])
        bench("bgrunner logs --since 10m -n 50 (.4, .3 gzipped)", [*cli, "--since", "10m", "-n", "50"])

    print()
    what = f"{size / 1e9:.2f} GB, {meta['lines']:,} lines, {len(files)} files"
    print(f"| command ({what}) | median | min | lines out | goal |")
    print("| --- | ---: | ---: | ---: | --- |")
    for label, (med, low, count), goal in rows:
        print(f"| `{label}` | {med:.3f} s | {low:.3f} s | {count} | {goal} |")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"\nremoved {folder} (--keep leaves it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
