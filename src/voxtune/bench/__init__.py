"""The paper's benchmark (`voxtune bench`) and a scaling model that plans a search (`voxtune plan`).

benchmark.py runs the same M-trial search under each mode and worker count and writes
BENCH/bench.json, speedup.png and bench.md; plan.py calibrates a makespan model from that
bench.json (or from default constants shaped like the paper's V100 setting) and recommends a split.
"""
