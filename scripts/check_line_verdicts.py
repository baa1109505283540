"""Compare a station's verdict log with the demo line video's ground truth (torch-free).

usage: python scripts/check_line_verdicts.py verdicts.jsonl line.avi.json
Prints the station's headline (catch rate on the defective frames, false rejects on the good ones: NG
or REVIEW, since a REVIEW part leaves the line too), the OK / REVIEW / NG counts, and which frames were
missed or falsely rejected. Event lines (drift) are counted apart. Exit 0 always: this reports how the
demo model did; the runtime's exact-frame behaviour is asserted in tests/runtime.
"""
import collections
import json
import sys


def main(log_path: str, truth_path: str) -> int:
    truth = json.load(open(truth_path, encoding="utf-8"))
    defective = {int(i) for i in truth["defective"]}
    verdict, events = {}, collections.Counter()
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "event" in rec:
                events[rec["event"]] += 1
                continue
            verdict[rec["seq"]] = rec["verdict"]
    seen = set(verdict)
    ng = {s for s, v in verdict.items() if v == "NG"}
    flagged = {s for s, v in verdict.items() if v in ("NG", "REVIEW")}
    counts = collections.Counter(verdict.values())
    good = seen - defective
    caught = defective & flagged
    missed = sorted((defective & seen) - flagged)
    false_reject = sorted(good & flagged)
    print(f"frames logged {len(seen)}/{truth['frames']}: OK {counts['OK']}, REVIEW {counts['REVIEW']}, NG {counts['NG']}, "
          f"REJECTED {counts['REJECTED']}" + (f"; events {dict(events)}" if events else ""))
    print(f"defective {len(defective & seen)}: caught {len(caught)} (NG {len(defective & ng)}, REVIEW "
          f"{len(caught - ng)}), missed {len(missed)} {missed[:10]}; good {len(good)}: false rejects {len(false_reject)} "
          f"(NG {len(good & ng)}, REVIEW {len(false_reject) - len(good & ng)}) {false_reject[:10]}")
    print(f"HEADLINE catch rate {len(caught)}/{len(defective & seen)}, false rejects {len(false_reject)}/{len(good)} "
          f"(OK {counts['OK']} / REVIEW {counts['REVIEW']} / NG {counts['NG']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
