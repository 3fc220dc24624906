"""Runs a command and records its resident memory each time it finishes a piece of work; prints JSON.

    python watch_memory.py GLOB -- COMMAND ...

A piece of work is a line added to the files matching GLOB (`RUN/history.csv`: an epoch) or a new file
matching it (`RUN/*/sweep_result.json`: a sweep's row). Every 0.1 s the command's resident memory
(`VmRSS` of /proc/PID/status) is read; the first reading after the count of pieces grows is recorded
beside the new count. Prints `{"returncode": ..., "marks": [[pieces, rss_mib], ...], "peak_mib": ...}`.
"""

import glob
import json
import subprocess
import sys
import time

pattern, command = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            kib = next(line for line in status if line.startswith("VmRSS:")).split()[1]
        return int(kib) / 1024
    except (OSError, StopIteration):  # the process has ended
        return 0.0


def pieces() -> int:
    files = glob.glob(pattern)
    if "*" in pattern:
        return len(files)
    count = 0
    for name in files:  # lines after a header
        try:
            with open(name) as f:
                count += max(0, sum(1 for line in f if line.strip()) - 1)
        except OSError:  # replaced at this moment (an atomic write)
            return -1
    return count


process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
marks, seen, peak = [], 0, 0.0
while process.poll() is None:
    memory, count = rss_mib(process.pid), pieces()
    peak = max(peak, memory)
    if count > seen and memory:
        marks.append([count, round(memory, 1)])
        seen = count
    time.sleep(0.1)
stderr = process.stderr.read()
print(json.dumps({"returncode": process.returncode, "marks": marks, "peak_mib": round(peak, 1),
                  "stderr_tail": stderr[-2000:]}))
