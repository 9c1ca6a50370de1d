"""Scratch (2026-12-08, AVX2-only AMD EPYC fam 25 model 1, nothing else running): see docs/benchmarks.md,
'Where a 2D training step goes on a CPU with AVX2 only'. Run from the repository root:
    python docs/results/scratch/step_bn_channels_last.py
"""
import torch, time, statistics
import torch.nn.functional as F
torch.manual_seed(0)
def native(x, w, b):
    return F.relu(F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5))
def rows(t, g):
    c = t.shape[1]
    return t.permute(0, 2, 3, 1).reshape(-1, g * c)
def fold(v, g):
    return v.view(g, -1).sum(0)
class BNReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, eps, g):
        c = x.shape[1]
        x2 = rows(x, g)
        m = x2.shape[0] * g
        s1 = fold(x2.sum(0), g)
        s2 = fold(torch.linalg.vecdot(x2.t(), x2.t()) if False else (x2 * x2).sum(0), g)
        mean = s1 / m
        var = (s2 / m - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        scale = w * invstd
        shift = b - mean * scale
        y = torch.empty_like(x)
        y2 = rows(y, g)
        torch.addcmul(shift.repeat(g), x2, scale.repeat(g), out=y2)
        y2.clamp_min_(0)
        ctx.save_for_backward(x, y, mean, invstd, scale)
        ctx.g = g
        return y
    @staticmethod
    def backward(ctx, gy):
        x, y, mean, invstd, scale = ctx.saved_tensors
        g = ctx.g
        x2, y2 = rows(x, g), rows(y, g)
        gy = gy.contiguous(memory_format=torch.channels_last)
        g2 = rows(gy, g)
        m = x2.shape[0] * g
        d = torch.where(y2 > 0, g2, 0)
        sdy = fold(d.sum(0), g)
        sdyx = fold((d * x2).sum(0), g)
        sdyxh = invstd * (sdyx - mean * sdy)
        k1 = -scale * invstd * sdyxh / m  # coefficient of x
        k0 = -scale * sdy / m - k1 * mean
        gx = torch.empty_like(x)
        gx2 = rows(gx, g)
        torch.addcmul(k0.repeat(g), x2, k1.repeat(g), out=gx2)
        gx2.addcmul_(d, scale.repeat(g))
        return gx, sdyxh, sdy, None, None
def custom(x, w, b, g=1):
    return BNReLU.apply(x, w, b, 1e-5, g)
shapes=[(8,4,128,128),(8,8,128,128),(8,12,128,128),(8,16,64,64),(8,16,128,128),(8,128,8,8)]
for shp in shapes:
    c=shp[1]; G=max(1,64//c)
    w=torch.rand(c,requires_grad=True); b=torch.randn(c,requires_grad=True)
    xs={"nchw":torch.randn(shp), "cl":torch.randn(shp).contiguous(memory_format=torch.channels_last)}
    x=xs["cl"].clone().requires_grad_(); g=torch.randn(shp).contiguous(memory_format=torch.channels_last)
    y1=native(x,w,b); gr1=torch.autograd.grad(y1,(x,w,b),g)
    y2=custom(x,w,b,G); gr2=torch.autograd.grad(y2,(x,w,b),g)
    err=[float((a-bb).abs().max()) for a,bb in zip((y1,)+gr1,(y2,)+gr2)]
    t={k:[] for k in ("nchw","cl","cl-custom")}
    for r in range(15):
        for k,f,xx in (("nchw",native,xs["nchw"]),("cl",native,xs["cl"]),("cl-custom",lambda a,bb,cc: custom(a,bb,cc,G),xs["cl"])):
            xx=xx.detach().requires_grad_(); gg=g if k!="nchw" else g.contiguous()
            st=time.perf_counter()
            y=f(xx,w,b); y.backward(gg)
            t[k].append(time.perf_counter()-st)
    print(shp, G, " ".join("%s %.2f ms"%(k,1000*statistics.median(v)) for k,v in t.items()), "maxerr", ["%.1e"%e for e in err])
