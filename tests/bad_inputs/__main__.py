"""Print the battery as a table: case | exit | traceback? | intact | seconds | clean."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from . import CASES, check, label_template, template


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run the cases whose name contains this")
    args = ap.parse_args()
    import torch

    cases = [c for c in CASES if (not args.only or args.only in c.name)
             and not (c.gpu_free and torch.cuda.is_available())]
    rows, t0 = [], time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autoal-bad-inputs-") as tmp:
        base = Path(tmp) / "templates"
        base.mkdir()
        if any(c.needs_template for c in cases):
            template(base)
        if any(c.needs_label for c in cases):
            label_template(base)
        for i, case in enumerate(cases):
            d = Path(tmp) / f"case{i:03d}"
            d.mkdir()
            outcome = check(case, d)
            rows.append(outcome)
            if not outcome.clean:
                print(f"--- {case.name}: exit {outcome.exit}\n{outcome.stderr}", file=sys.stderr)
    width = max(len(r.case.name) for r in rows)
    print(f"{'case':<{width}} | exit | traceback? | intact | seconds | clean")
    for r in rows:
        print(f"{r.case.name:<{width}} | {str(r.exit):>4} | {'yes' if r.traceback else 'no':>10} | "
              f"{'yes' if r.intact else 'NO':>6} | {r.seconds:7.2f} | {'yes' if r.clean else 'NO'}")
    print(f"\n{sum(r.clean for r in rows)} of {len(rows)} cases clean in {time.monotonic() - t0:.0f} s "
          f"(longest {max(r.seconds for r in rows):.1f} s)")
    return 0 if all(r.clean for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
