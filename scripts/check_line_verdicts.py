"""Compare a station's verdict log with the demo line video's ground truth (torch-free).

usage: python scripts/check_line_verdicts.py verdicts.jsonl line.avi.json
Prints the confusion counts and which frames were missed or falsely rejected. Exit 0 always:
this reports how the demo model did; the runtime's exact-frame behaviour is asserted in tests/runtime.
"""
import json
import sys


def main(log_path: str, truth_path: str) -> int:
    truth = json.load(open(truth_path, encoding="utf-8"))
    defective = {int(i) for i in truth["defective"]}
    ng, seen = set(), set()
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            seen.add(rec["seq"])
            if rec["verdict"] == "NG":
                ng.add(rec["seq"])
    missed = sorted(defective - ng)
    false_ng = sorted(ng - defective)
    good = len(seen) - len(defective & seen)
    print(f"frames logged {len(seen)}/{truth['frames']}; defective {len(defective)}: caught {len(defective & ng)}, "
          f"missed {len(missed)} {missed[:10]}; good {good}: false NG {len(false_ng)} {false_ng[:10]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
