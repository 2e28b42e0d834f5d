#!/usr/bin/env python3
"""What one ping's path through side B touches, from a valgrind lackey trace.

Usage: footprint.py TRACE EXE BASE IMPL [TOP]
TRACE: the log of `valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes` around side B's
daemon while A pinged B at 5/s; EXE: that daemon's executable; BASE: where it was mapped (hex).

B's path of one ping is cut from the trace at a thread's first UDP receive after an epoll wait
(the request arriving at an idle daemon) up to the next UDP send by any thread (the reply
leaving; boringtun's reply leaves from another thread than the one that received the request),
counting what every thread touched in between. On this machine a line that was last touched
one ping earlier is fetched again (docs/fast-path.md, "What a cold turn waits on"), so the
distinct cache lines of that path, not the instructions, are what a ping from idle pays for. The counts barely move from run to
run (the same build: 422, 421, 420 code lines), where ping medians need many rounds to separate
a few microseconds.

Prints "IMPL footprint_<what> <median>" result lines (instructions, code and data lines and
pages) and then, to stderr, the code lines per function (mean over the pings).
"""
import bisect
import collections
import re
import statistics
import subprocess
import sys

RECV = {"45", "47", "299"}        # recvfrom, recvmsg, recvmmsg
SEND = {"44", "46", "307"}        # sendto, sendmsg, sendmmsg
EPOLL = {"232", "281"}            # epoll_wait, epoll_pwait
SYSCALL = re.compile(r"SYSCALL\[\d+,(\d+)\]\((\d+)\) (\S+)")


def paths(trace):
    """Yields (code lines, data lines, instructions) of each ping's path on B."""
    cur, tid, last = None, None, {}
    with open(trace, errors="replace") as f:
        for line in f:
            if line.startswith("SYSCALL"):
                m = SYSCALL.match(line)
                if not m:
                    continue
                tid, nr, what = m.groups()
                if what == "...":          # the resumption of a blocking call
                    continue
                if cur is not None:
                    if nr in SEND:
                        yield cur
                        cur = None
                elif nr in RECV and last.get(tid) in EPOLL:
                    cur = (set(), set(), [0])
                last[tid] = nr
                continue
            if cur is None:
                continue
            if line.startswith("I  "):
                cur[0].add(int(line[3:].split(",")[0], 16) >> 6)
                cur[2][0] += 1
            elif line[:2] in (" L", " S", " M"):
                cur[1].add(int(line[3:].split(",")[0], 16) >> 6)


def symbols(exe, base):
    out = subprocess.run(["nm", "-S", "--defined-only", "-C", exe], capture_output=True, text=True).stdout
    syms = []
    for l in out.splitlines():
        p = l.split(" ", 3)
        if len(p) == 4 and p[2] in "tTwW":
            syms.append((int(p[0], 16) + base, int(p[1], 16), p[3]))
    syms.sort()
    return syms


def main():
    trace, exe, base, impl = sys.argv[1], sys.argv[2], int(sys.argv[3], 16), sys.argv[4]
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 30
    ps = list(paths(trace))[-26:-1]  # the last 25 whole pings (warm-up and handshake left out)
    if len(ps) < 5:
        sys.exit("footprint: only %d ping paths in %s" % (len(ps), trace))
    med = lambda f: statistics.median(f(p) for p in ps)
    for key, f in [("instr", lambda p: p[2][0]),
                   ("code_lines", lambda p: len(p[0])), ("code_pages", lambda p: len({l >> 6 for l in p[0]})),
                   ("data_lines", lambda p: len(p[1])), ("data_pages", lambda p: len({l >> 6 for l in p[1]}))]:
        print("%s footprint_%s %s" % (impl, key, med(f)))
    syms = symbols(exe, base)
    starts = [s[0] for s in syms]
    per = collections.Counter()
    for p in ps:
        for l in p[0]:
            a = l << 6
            i = bisect.bisect_right(starts, a) - 1
            if i >= 0 and a < syms[i][0] + syms[i][1] + 64:
                per[syms[i][2][:100]] += 1
            elif base <= a < base + (1 << 26):
                per["(%s, no symbol)" % exe.rsplit("/", 1)[-1]] += 1
            else:
                per["(shared libraries)"] += 1
    print("%s: code lines per ping by function (mean of %d pings)" % (impl, len(ps)), file=sys.stderr)
    for name, n in per.most_common(top):
        print("%7.1f  %s" % (n / len(ps), name), file=sys.stderr)


main()
