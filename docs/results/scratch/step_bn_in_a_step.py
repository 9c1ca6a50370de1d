"""Scratch (2026-12-08, AVX2-only AMD EPYC fam 25 model 1, nothing else running): see docs/benchmarks.md,
'Where a 2D training step goes on a CPU with AVX2 only'. Run from the repository root:
    python docs/results/scratch/step_bn_in_a_step.py 15
"""
import sys, time, statistics
sys.path.insert(0, "benchmarks")
import torch
exec(open("docs/results/scratch/step_bn_channels_last.py").read().split("shapes=")[0])
from featsup.models.blocks import ConvBNReLU
from teacher_layout import make_step
orig = ConvBNReLU.forward
def fwd(self, x):
    y = self.conv(x)
    c = y.shape[1]
    if self.training and c < 16 and y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        return custom(y, self.bn.weight, self.bn.bias, max(1, 64 // c))
    return self.act(self.bn(y))
steps = {"nchw": make_step("UN-DS student", [8,16,32,64,128], False),
         "cl": make_step("UN-DS student", [8,16,32,64,128], True)}
def timed(k):
    if k == "cl+bn": ConvBNReLU.forward = fwd
    t = steps["cl" if k == "cl+bn" else k](False)
    ConvBNReLU.forward = orig
    return t
keys = ["nchw", "cl", "cl+bn"]
for k in keys: timed(k); timed(k)
res = {k: [] for k in keys}
for r in range(int(sys.argv[1])):
    for k in keys: res[k].append(timed(k))
for k in keys: print(k, "%.0f ms"%(1000*statistics.median(res[k])), "ratio nchw/this %.3f"%statistics.median([a/b for a,b in zip(res["nchw"],res[k])]))
