"""Write throughput of the audit log: synchronous=FULL against NORMAL, one process and several at once.

    python bench/audit_bench.py [--procs 4] [--writes 500] [--rounds 1] [--dir PATH]

Each round runs, interleaved and each into a fresh file: one process with FULL, one with NORMAL, then --procs
processes with FULL, then with NORMAL (--writes decisions per process). After each concurrent run it checks
that every row is present, that the chain verifies and that no write failed with "database is locked". The
figure to quote is the FULL / NORMAL ratio measured side by side; absolute writes/s depend on the disk, which
is why the files go under artifacts/ (the disk a real log lives on) unless --dir says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from so8t_core.config import artifacts_dir
from so8t_core.serving.audit import AuditConfig, AuditError, AuditLog

H = hashlib.sha256(b"bench").hexdigest()


def _write(log: AuditLog, tag: str, i: int) -> None:
    log.log_decision(
        request_id=f"{tag}-{i}",
        decision="ALLOW",
        input_hash=H,
        thinking_hash=H,
        final_text=f"answer {i}",
        model_id="bench",
        ocr_summary="receipt" if i % 10 == 0 else None,
    )


def _worker(path: str, sync: str, writes: int, tag: str, barrier, results) -> None:
    failures = 0
    with AuditLog(path, AuditConfig(synchronous=sync)) as log:
        barrier.wait()  # every process has opened the file: start together
        t0 = time.perf_counter()
        for i in range(writes):
            try:
                _write(log, tag, i)
            except AuditError:  # still locked after the bounded retries
                failures += 1
        results.put((writes - failures, failures, t0, time.perf_counter()))


def single(path: Path, sync: str, writes: int) -> float:
    """Writes/s of one process writing ``writes`` decisions."""
    with AuditLog(path, AuditConfig(synchronous=sync)) as log:
        t0 = time.perf_counter()
        for i in range(writes):
            _write(log, "s", i)
        return writes / (time.perf_counter() - t0)


def concurrent(path: Path, sync: str, procs: int, writes: int) -> dict[str, float]:
    """Aggregate writes/s of ``procs`` spawned processes, plus the checks on the resulting file."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    AuditLog(path).close()  # create the schema once, so the timing is of writes only
    ps = [ctx.Process(target=_worker, args=(str(path), sync, writes, f"p{k}", barrier, results)) for k in range(procs)]
    for p in ps:
        p.start()
    out = [results.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    done, failures = sum(o[0] for o in out), sum(o[1] for o in out)
    span = max(o[3] for o in out) - min(o[2] for o in out)  # perf_counter is system-wide on Linux
    con = sqlite3.connect(path)
    present = con.execute("SELECT count(*) FROM decisions").fetchone()[0]
    con.close()
    with AuditLog(path) as log:
        ok = log.verify()
    return {
        "writes_s": done / span,
        "present": present,
        "expected": procs * writes,
        "locked": failures,
        "verify_ok": ok.ok,
        "exit_codes_ok": all(p.exitcode == 0 for p in ps),
    }


def _fs_type(path: Path) -> str:
    best, kind = "", "?"
    with open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            _, mount, fstype = line.split()[:3]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--writes", type=int, default=500, help="decisions per process")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repeats; medians are reported")
    ap.add_argument("--dir", type=Path, default=None, help="where the bench files go (default: artifacts/)")
    args = ap.parse_args()
    parent = args.dir or artifacts_dir()
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="audit_bench_", dir=parent))
    print(
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} cpus, "
        f"files on {_fs_type(work.resolve())} ({work})"
    )
    print(f"{args.procs} processes x {args.writes} writes, {args.rounds} round(s), interleaved FULL / NORMAL")
    rates: dict[str, list[float]] = {}
    checks: list[str] = []
    try:
        for r in range(args.rounds):
            for sync in ("FULL", "NORMAL"):
                rates.setdefault(f"single {sync}", []).append(single(work / f"s{r}{sync}.db", sync, args.writes))
            for sync in ("FULL", "NORMAL"):
                c = concurrent(work / f"c{r}{sync}.db", sync, args.procs, args.writes)
                rates.setdefault(f"{args.procs} procs {sync}", []).append(c["writes_s"])
                checks.append(
                    f"{sync} round {r}: rows present {c['present']}/{c['expected']}, locked failures "
                    f"{c['locked']}, verify ok {c['verify_ok']}, exit codes ok {c['exit_codes_ok']}"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{'run':<20}{'writes/s':>12}")
    for k, v in med.items():
        print(f"{k:<20}{v:>12.0f}")
    print(f"\nratio FULL/NORMAL, single process: {med['single FULL'] / med['single NORMAL']:.3f}")
    print(
        f"ratio FULL/NORMAL, {args.procs} processes:  "
        f"{med[f'{args.procs} procs FULL'] / med[f'{args.procs} procs NORMAL']:.3f}"
    )
    print("\n" + "\n".join(checks))


if __name__ == "__main__":
    main()
