"""Scratch (2026-12-08, AVX2-only AMD EPYC fam 25 model 1, nothing else running): see docs/benchmarks.md,
'Where a 2D training step goes on a CPU with AVX2 only'. Run from the repository root:
    python docs/results/scratch/step_ops_profile.py
"""
import sys; sys.path.insert(0, "benchmarks")
import torch
from torch.profiler import profile, ProfilerActivity
from teacher_layout import make_step
res={}
for cl in (False, True):
    s = make_step("UN-DS student", [8,16,32,64,128], cl)
    for _ in range(4): s(False)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(6): s(False)
    res[cl]={e.key:e.self_cpu_time_total/6000 for e in p.key_averages()}
keys=sorted(set(res[0])|set(res[1]), key=lambda k:-max(res[0].get(k,0),res[1].get(k,0)))
print("total nchw %.0f cl %.0f"%(sum(res[0].values()),sum(res[1].values())))
for k in keys[:30]: print("%-60s %7.1f %7.1f"%(k[:60],res[0].get(k,0),res[1].get(k,0)))
