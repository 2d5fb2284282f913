#!/usr/bin/env python3
"""Replays demo results through the walk's settling rules, to compare them without rerunning.

    scripts/replay_settling.py [--ladder-from DIR] RESULTS_DIR [RESULTS_DIR ...]

Each cell (engine, rate) of the given sweeps' points.csv is reduced to its shares of good,
over and invalid tries. Then many sets of three demos are drawn, each cell's tries drawn
independently with those shares, every engine walking its ladder up to its first cell that
settles over, and each rule settles every cell its own way. An engine's ladder is every rate
it was tried at in the given sweeps, or with --ladder-from the rates one sweep tried (older
demos measured rungs that today's reach forecast leaves out):

- maj3: two agreeing repeats, else the majority of three valid ones (at most 5 tries);
- leadL/K/T: one verdict leads by L valid repeats, at most K valid ones, T tries (the demo
  today is lead2/7/9).

Prints, per rule, the chance that 9 or more of the engines keep the same knee in all three
runs, the mean number that do, and the mean tries a demo spends. Tries are independent in
the replay, which real noise (in bursts) is not: compare the rules, not the absolute figures.
"""
import collections
import csv
import random
import sys

def shares(dirs):
    stats = collections.defaultdict(lambda: [0, 0, 0])
    ladders = collections.defaultdict(set)
    for d in dirs:
        for r in csv.DictReader(open(f"{d}/points.csv")):
            key = (r["engine"], int(float(r["offered_rps"])))
            ladders[r["engine"]].add(key[1])
            if r.get("beyond_reach") == "true":
                continue
            s = stats[key]
            if r["valid"] != "true":
                s[2] += 1
            elif r["over_slo"] == "true" or r["saturated"] == "true":
                s[1] += 1
            else:
                s[0] += 1
    return stats, {e: sorted(r for r in rates if sum(stats[(e, r)]) > 0) for e, rates in ladders.items()}


def settle(counts, rule, rng):
    g, o, i = counts
    n = g + o + i
    good = over = tries = 0
    while True:
        x = rng.random() * n
        tries += 1
        if x < g:
            good += 1
        elif x < g + o:
            over += 1
        if rule == "maj3":
            if good >= 2 or over >= 2 or good + over >= 3 or tries >= 5:
                break
        else:
            lead, cap, most = map(int, rule[4:].split("/"))
            if abs(good - over) >= lead or good + over >= cap or tries >= most:
                break
    return good > over, tries


def demo(stats, ladders, rule, rng):
    knees, tries = {}, 0
    for engine, ladder in ladders.items():
        knee = None
        for rate in ladder:
            ok, t = settle(stats[(engine, rate)], rule, rng)
            tries += t
            if not ok:
                break
            knee = rate
        knees[engine] = knee
    return knees, tries


def tried(d):
    rates = collections.defaultdict(set)
    for r in csv.DictReader(open(f"{d}/points.csv")):
        if r.get("beyond_reach") != "true":
            rates[r["engine"]].add(int(float(r["offered_rps"])))
    return {e: sorted(v) for e, v in rates.items()}


def main():
    args = sys.argv[1:]
    ladder_from = None
    if args[:1] == ["--ladder-from"] and len(args) > 1:
        ladder_from, args = args[1], args[2:]
    args = [a for a in args if not a.endswith((".log", ".time", ".jitter", ".done"))]
    if not args:
        sys.exit(__doc__)
    stats, ladders = shares(args)
    if ladder_from:
        ladders = tried(ladder_from)
    engines = list(ladders)
    for rule in ["maj3", "lead2/5/7", "lead2/7/9", "lead3/7/9"]:
        rng = random.Random(1)
        sets, held9, held, spent = 4000, 0, 0, 0.0
        for _ in range(sets):
            runs = [demo(stats, ladders, rule, rng) for _ in range(3)]
            spent += sum(t for _, t in runs) / 3
            same = sum(1 for e in engines if runs[0][0][e] == runs[1][0][e] == runs[2][0][e])
            held += same
            held9 += same >= 9
        print(
            f"{rule:10} P(>=9 of {len(engines)} hold) {held9 / sets:.2f}  "
            f"mean held {held / sets:.2f}  tries a demo {spent / sets:.1f}"
        )


if __name__ == "__main__":
    main()
