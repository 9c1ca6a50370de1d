"""Scratch (2026-12-08, AVX2-only AMD EPYC fam 25 model 1, nothing else running): see docs/benchmarks.md,
'Where a 2D training step goes on a CPU with AVX2 only'. Run from the repository root:
    python docs/results/scratch/step_threads.py
"""
import sys, time, statistics, threading
sys.path.insert(0, "benchmarks")
import torch
from teacher_layout import make_step
steps = {}
torch.set_num_threads(2)
s = make_step("UN-DS student", [8,16,32,64,128], False)
s2 = make_step("UN-DS student", [8,16,32,64,128], False)
for _ in range(3): s(False)
def run_two(n):
    def w(f):
        for _ in range(n): f(False)
    ts=[threading.Thread(target=w,args=(f,)) for f in (s,s2)]
    t=time.perf_counter(); [x.start() for x in ts]; [x.join() for x in ts]
    return (time.perf_counter()-t)/(2*n)
res={"2thr":[], "1thr":[], "2x1thr":[]}
for r in range(7):
    torch.set_num_threads(2); t=time.perf_counter()
    for _ in range(4): s(False)
    res["2thr"].append((time.perf_counter()-t)/4)
    torch.set_num_threads(1); t=time.perf_counter()
    for _ in range(4): s(False)
    res["1thr"].append((time.perf_counter()-t)/4)
    torch.set_num_threads(1); res["2x1thr"].append(run_two(4))
for k,v in res.items(): print(k, "median ms/step %.0f"%(1000*statistics.median(v)), ["%.0f"%(1000*x) for x in v])
