"""The ledger's write path on the loop in instructions a settle (callgrind), and the SQL
statements and sqlite3 steps a batch makes: `ledger_write_cost.py`'s in-process driver
(prepared settlements through `SqliteLedger.settle_async` on uvloop, `--in-flight` at once,
each batch takes them all), counted where other jobs on the machine do not move the figure.

    python scripts/ledger_instructions.py --settles 1200 --in-flight 12      # under callgrind
    python scripts/ledger_instructions.py --statements                       # SQL a batch, no valgrind

Callgrind counts only from the warm-up's end to the run's (`callgrind_control -i`), per thread:
the loop (the driver's ~12 us a settle included: `ledger_write_cost.py --path driver`) and the
COMMIT helper (with KEEP_CALLGRIND=1 the files stay, as kept-callgrind.out-NN, for
callgrind_annotate). Prints figures, asserts nothing; run it from two checkouts to compare them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSIDE = "LEDGER_INSTRUCTIONS_INSIDE"


def inside(args: argparse.Namespace) -> None:
    """The driven process (under valgrind unless --statements)."""
    import uvloop

    sys.path.insert(0, str(HERE))
    from ledger_write_cost import Prepared, drive  # the same driver, as measured there
    from settlesim.clients.bench import Requests
    from settlesim.clients.workload import Workload
    from settlesim.server.ledger.sqlite import SqliteLedger
    from settlesim.server.service import SettlementCore
    from settlesim.server.world_loader import load_world
    from settlesim.v1 import settlement_service_pb2 as pb

    world = load_world(args.world)
    source = Requests(Workload.load(args.world), 1, count=args.requests)
    requests = [pb.SettleVisitRequest.FromString(source.next()) for _ in range(args.requests)]
    ledger = SqliteLedger(Path(tempfile.mkdtemp(prefix="ledger-instr-")) / "ledger.db")
    core = SettlementCore(world, ledger)
    prepared = Prepared(core, requests)
    loop = uvloop.new_event_loop()
    loop.run_until_complete(drive(ledger, core, requests, prepared, args.warmup, args.in_flight))
    committer = ledger._loop_committer
    batches, writes = committer.batches, committer.writes
    if args.statements:
        seen: Counter[str] = Counter()
        ledger._db.set_trace_callback(lambda sql: seen.update([" ".join(sql.split()[:4])]))
        loop.run_until_complete(drive(ledger, core, requests, prepared, args.settles, args.in_flight))
        ledger._db.set_trace_callback(None)
        n_batches, n_writes = committer.batches - batches, committer.writes - writes
        print(f"{n_writes} settles in {n_batches} batches ({n_writes / n_batches:.1f} a batch); "
              "statements run (each row of an executemany counts), a settle:")  # fmt: skip
        for text, n in seen.most_common():
            print(f"  {n / n_writes:6.2f}  {text}")
        print(f"  {sum(seen.values()) / n_writes:6.2f}  in all ({sum(seen.values()) / n_batches:.1f} a batch)")
    else:
        control = ["callgrind_control", "-i"]
        subprocess.run([*control, "on", str(os.getpid())], capture_output=True, check=True)
        loop.run_until_complete(drive(ledger, core, requests, prepared, args.settles, args.in_flight))
        subprocess.run([*control, "off", str(os.getpid())], capture_output=True, check=True)
        print(f"batches {committer.batches - batches} writes {committer.writes - writes}", flush=True)
    ledger.close()
    loop.close()


def totals(out: Path) -> dict[str, int]:
    """Instructions by thread: callgrind's files OUT-01 (the main thread: the loop), OUT-02 ..."""
    counts: dict[str, int] = {}
    for part in sorted(out.parent.glob(f"{out.name}-*")):
        for line in part.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                counts[part.name.rsplit("-", 1)[1]] = int(line.split()[1])
        part.rename(part.with_name("kept-" + part.name)) if os.environ.get("KEEP_CALLGRIND") else part.unlink()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1000)
    parser.add_argument("--world", type=Path, help="a generated world (default: one made of --persons)")
    parser.add_argument("--settles", type=int, default=1200)
    parser.add_argument("--warmup", type=int, default=240)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--in-flight", type=int, default=12)
    parser.add_argument("--statements", action="store_true", help="count SQL statements instead (no valgrind)")
    args = parser.parse_args()
    if os.environ.get(INSIDE):
        inside(args)
        return
    if args.world is None:
        from settlesim.server.world_generate import generate_world

        args.world = Path(tempfile.mkdtemp(prefix="ledger-instr-world-"))
        generate_world(args.world, args.persons, 1)
    command = [sys.executable, __file__, "--world", str(args.world), "--settles", str(args.settles),
               "--warmup", str(args.warmup), "--requests", str(args.requests),
               "--in-flight", str(args.in_flight)]  # fmt: skip
    env = {**os.environ, INSIDE: "1"}
    if args.statements:
        subprocess.run([*command, "--statements"], env=env, check=True)
        return
    out = Path(tempfile.mkdtemp(prefix="ledger-instr-cg-")) / "callgrind.out"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                f"--callgrind-out-file={out}"]  # fmt: skip
    run = subprocess.run([*valgrind, *command], env=env, capture_output=True, text=True)
    if run.returncode:
        sys.exit(run.stderr[-2000:])
    print(run.stdout.strip())
    writes = max(1, int(run.stdout.split("writes")[-1].split()[0]))
    counts = totals(out)
    loop = counts.pop("01", 0)
    print(f"{loop / writes / 1e3:8.1f} k instructions a settle on the loop")
    for thread, n in sorted(counts.items()):
        if n:
            print(f"{n / writes / 1e3:8.1f} k instructions a settle in thread {thread}")


if __name__ == "__main__":
    main()
