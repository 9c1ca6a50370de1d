"""Scratch (2026-12-08, AVX2-only AMD EPYC fam 25 model 1, nothing else running): see docs/benchmarks.md,
'Where a 2D training step goes on a CPU with AVX2 only'. Run from the repository root:
    python docs/results/scratch/step_conv_backward.py
"""
import torch, time, statistics
import torch.nn.functional as F
torch.manual_seed(0)
cb = torch.ops.aten.convolution_backward
def bench(f, n=15):
    f(); f()
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return 1000*statistics.median(ts)
for (cin, cout, s) in [(40,8,128),(8,8,128),(32,8,128),(16,16,64),(64,16,64),(32,32,32)]:
    for fmt in ("nchw","cl"):
        mf = torch.channels_last if fmt=="cl" else torch.contiguous_format
        x = torch.randn(8,cin,s,s).contiguous(memory_format=mf)
        w = torch.randn(cout,cin,3,3).contiguous(memory_format=mf)
        g = torch.randn(8,cout,s,s).contiguous(memory_format=mf)
        fw = bench(lambda: F.conv2d(x,w,padding=1))
        both = bench(lambda: cb(g,x,w,None,[1,1],[1,1],[1,1],False,[0,0],1,[True,True,False]))
        gi = bench(lambda: cb(g,x,w,None,[1,1],[1,1],[1,1],False,[0,0],1,[True,False,False]))
        gw = bench(lambda: cb(g,x,w,None,[1,1],[1,1],[1,1],False,[0,0],1,[False,True,False]))
        wt = w.flip(2,3).transpose(0,1).contiguous(memory_format=mf)
        gi_fwd = bench(lambda: F.conv2d(g,wt,padding=1))
        print(f"{cin:3d}->{cout:3d} @{s:3d} {fmt:4s} fwd {fw:6.2f} bwd {both:6.2f} (gin {gi:6.2f} gw {gw:6.2f}) gin-as-fwd {gi_fwd:6.2f}")
