"""UMT stage 1 and classifier inference: umt_jax's compiled step vs the same step in PyTorch eager, same machine.

  python -m benchmarks.vs_pytorch                       # the three configs below, 2 threads each
  python -m benchmarks.vs_pytorch --configs s112 --rounds 7 --steps 3
  python -m benchmarks.vs_pytorch --profile             # + where each side's step goes: matmul / copies / rest
  XLA_PYTHON_CLIENT_PREALLOCATE=false python -m benchmarks.vs_pytorch --device cuda --dtype bfloat16 \
      --configs s224,b224 --rounds 3 --steps 5     # one GPU: jax and torch share it, so no preallocation

PyTorch side (official semantics, the modules of tests/torch_ref.py with the official key names, plus timm's
DropPath): the frozen CLIP teacher under `no_grad` (`VisualTransformer.teacher`: frame-wise, the last K blocks
through ln_post/proj, L2-normed, the last block's CLS attention) -> `torch.multinomial(attn, N)` semantic mask
exactly as `engine_for_pretraining_umt.py` builds it -> `PretrainUMT` on the visible tokens -> the 'l2' loss
`(2 - 2 (s·t).sum(-1)).mean()` -> backward -> AdamW (0.9, 0.95), wd 0.05 on >= 2-D weights. umt_jax side:
`train_loop.build_step` of `trainers.umt_pretrain.model_task` (the program a training run executes).
Inference: the fine-tune `VisionTransformer` (mean pool, fc_norm, head) under `no_grad` vs `VideoClassifier`
jitted. Both sides use `--threads` threads (torch.set_num_threads; XLA:CPU's pool is sized by the cores, so
run under `taskset` with as many cores). Rounds interleave the two sides; the table gives medians over all
timed steps. `--official PATH` also times the official `single_modality` modules of an OpenGVLab/unmasked_teacher
checkout (imported from PATH at run time; nothing of it is copied here). `--dtype bfloat16`: PyTorch under
`torch.autocast` (the official code trains under autocast too, fp16 with a loss scaler), umt_jax with bf16 compute
and fp32 params; attention `auto` on the umt_jax side (cuDNN flash attention on a GPU, XLA elsewhere).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import time

import numpy as np

CONFIGS = {  # name: (student variant, frames, size, batch); teacher 384 wide × 6 layers -> 256, 4 aligned layers
    "s112": ("S", 8, 112, 4),
    "s224": ("S", 8, 224, 4),
    "ti112": ("Ti", 8, 112, 4),  # overhead-heavy: small matmuls, the same number of ops
    "b224": ("B", 8, 224, 32),  # for a GPU
}
TEACHER = dict(width=384, layers=6, heads=6, embed=256, patch=16)
ALIGN, MASK, DROP_PATH = 4, 0.8, 0.1


def jax_side(variant: str, frames: int, size: int, batch: int, dtype: str = "float32"):
  """-> (train_step() -> loss, infer() -> logits, the compiled step's and forward's HLO texts) on umt_jax's
  compiled programs, random weights."""
  import jax
  import jax.numpy as jnp
  from umt_jax import config_lib, sharding, train_loop
  from umt_jax.models.clip import CLIPConfig
  from umt_jax.models.heads import VideoClassifier
  from umt_jax.trainers import umt_pretrain

  c = config_lib.base("umt")
  c.batch_size = batch
  c.data.update(num_frames=frames, size=size)
  c.model.update(variant=variant, drop_path=DROP_PATH, dtype=dtype, attn_impl="auto")
  c.teacher.update(align_layers=ALIGN, mask_ratio=MASK, dtype=dtype)
  tcfg = CLIPConfig(embed_dim=TEACHER["embed"], image_size=size, patch_size=TEACHER["patch"],
                    vision_width=TEACHER["width"], vision_layers=TEACHER["layers"], vision_heads=TEACHER["heads"])
  task = umt_pretrain.model_task(c, tcfg, None)
  ts = train_loop.build_step(c, task, steps=1000, per_epoch=100.0)
  shapes = {"video": ((batch, frames, size, size, 3), jnp.uint8)}
  step = ts.lower(shapes, task.extra)
  key = jax.random.key(0)
  box = {"state": ts.init_state(ts.init_params(key))}
  extra = jax.jit(lambda k: jax.tree.map(lambda x: 0.02 * jax.random.normal(k, x.shape, x.dtype), task.extra),
                  out_shardings=task.extra_shardings)(key)
  video = jax.device_put(np.random.default_rng(0).integers(0, 256, shapes["video"][0]).astype(np.uint8),
                         sharding.batch_sharding(ts.mesh))

  def train_step():
    box["state"], out = step(box["state"], {"video": video}, extra)
    return float(out["loss"])

  clf = VideoClassifier(config_lib.student_kwargs(c.model), num_classes=400, dtype=jnp.dtype(dtype))
  x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, frames, size, size, 3)), jnp.float32)
  p = jax.jit(clf.init)(key, x[:1])
  fwd = jax.jit(lambda p, x: clf.apply(p, x)).lower(p, x).compile()
  return train_step, lambda: np.asarray(fwd(p, x)), step.as_text(), fwd.as_text()


def torch_side(variant: str, frames: int, size: int, batch: int, official: str = "", device: str = "cpu",
               dtype: str = "float32"):
  """-> (train_step() -> loss, infer() -> logits) in PyTorch eager on `device`, the official stage-1 semantics
  (under bf16 autocast for dtype 'bfloat16')."""
  import contextlib
  import torch
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
  from tests import torch_ref
  from umt_jax.models.vit import VARIANTS

  v = VARIANTS[variant]
  t = TEACHER
  teacher = torch_ref.VisualTransformer(size, t["patch"], t["width"], t["layers"], t["heads"], t["embed"],
                                        conv3d=True).eval().requires_grad_(False).to(device)
  if official:
    student = official_student(official, v, frames, size)
  else:
    student = torch_ref.PretrainUMT(v.embed_dim, v.depth, v.num_heads, v.mlp_dim, v.patch_size, frames, size,
                                    t["embed"], ALIGN)
    rates = np.linspace(0, DROP_PATH, v.depth)
    for i, blk in enumerate(student.encoder.blocks):  # timm's DropPath on both residual branches
      blk.forward = _drop_path_forward(blk, float(rates[i]))
  student.to(device)
  decay = [p for n, p in student.named_parameters() if p.ndim > 1 and not n.endswith(".bias")]
  rest = [p for n, p in student.named_parameters() if not (p.ndim > 1 and not n.endswith(".bias"))]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                          lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
  g = torch.Generator().manual_seed(0)
  video = torch.rand((batch, 3, frames, size, size), generator=g).to(device)
  amp = (lambda: torch.autocast(torch.device(device).type, torch.bfloat16)) if dtype == "bfloat16" else \
      contextlib.nullcontext

  def train_step():
    with torch.no_grad(), amp():
      norm_clip, attn = teacher.teacher(video, ALIGN)  # (K, B, T·N, C), (B·T, N)
      bt, n = attn.shape
      n_vis = n - int(n * MASK)
      importance = torch.multinomial(attn.float(), n)
      mask = torch.ones((bt, n), device=video.device)
      mask[torch.arange(bt, device=video.device).view(-1, 1).repeat(1, n_vis), importance[:, :n_vis]] = 0
      mask = mask.view(batch, -1).to(torch.bool)
      k, c = norm_clip.shape[0], norm_clip.shape[-1]
      targets = norm_clip[~mask.unsqueeze(0).repeat(k, 1, 1)].reshape(k, batch, -1, c)
    with amp():
      out = student(video, mask)
      loss = (2 - 2 * (out.float() * targets.float()).sum(dim=-1)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()

  clf = torch_ref.Classifier(v.embed_dim, v.depth, v.num_heads, v.mlp_dim, v.patch_size, 1, frames, size, 400)
  clf.eval().to(device)

  def infer():
    with torch.no_grad(), amp():
      return clf(video).float().cpu().numpy()
  return train_step, infer


def _drop_path_forward(blk, rate: float):
  import torch

  def drop(x):
    if rate == 0.0 or not blk.training:
      return x
    keep = 1 - rate
    r = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x.div(keep) * r

  def forward(x: torch.Tensor) -> torch.Tensor:
    x = x + drop(blk.attn(blk.norm1(x)))
    return x + drop(blk.mlp(blk.norm2(x)))
  return forward


def official_student(path: str, v, frames: int, size: int):
  """The official `PretrainVisionTransformer` from a checkout's single_modality/models (needs timm)."""
  sys.path.insert(0, os.path.join(path, "single_modality"))
  from models.modeling_pretrain_umt import PretrainVisionTransformer  # noqa: the user's checkout
  return PretrainVisionTransformer(
      img_size=size, patch_size=v.patch_size, encoder_embed_dim=v.embed_dim, encoder_depth=v.depth,
      encoder_num_heads=v.num_heads, mlp_ratio=v.mlp_dim / v.embed_dim, qkv_bias=True, drop_path_rate=DROP_PATH,
      all_frames=frames, tubelet_size=1, clip_decoder_embed_dim=v.embed_dim, clip_output_dim=TEACHER["embed"],
      clip_return_layer=ALIGN, clip_student_return_interval=1)


# Where each side's step goes, by kind of kernel. PyTorch: self CPU time of the ops (torch.profiler); umt_jax: the
# durations of the compiled program's thunks (jax.profiler), each classified from the HLO by what it computes.
TORCH_MATMUL = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
                "aten::convolution_backward", "aten::_scaled_dot_product_flash_attention_for_cpu",
                "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
TORCH_COPIES = ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous")
KINDS = ("matmul", "layout copies", "rest")


def hlo_kinds(hlo: str) -> dict[str, str]:
  """Compiled HLO text -> {instruction name: kind}: 'matmul' for a dot or convolution or a fusion containing one
  (XLA:CPU's XNNPACK `ynn_fusion`s also hold reductions, so the name alone does not say), 'layout copies' for
  copies and transposes (and fusions named after them), 'rest' for everything else."""
  bodies, name, lines = {}, None, []
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      name, lines = head.group(1), []
    elif line.startswith("}") and name:
      bodies[name] = "\n".join(lines)
      name = None
    elif name:
      lines.append(line)
  has_dot = {n: bool(re.search(r" (dot|convolution)\(", b)) for n, b in bodies.items()}
  kinds = {}
  for b in bodies.values():
    for m in re.finditer(r"%([\w.\-]+) = [^\n]*? (\w[\w\-]*)\((?:[^\n]*calls=%([\w.\-]+))?", b):
      inst, op, called = m.groups()
      if op in ("while", "conditional", "call"):  # their thunks contain the body's, which are counted
        continue
      if op in ("dot", "convolution") or (called and has_dot.get(called)):
        kinds[inst] = "matmul"
      elif op in ("copy", "transpose") or re.match(r"(copy|transpose)", inst):
        kinds[inst] = "layout copies"
      else:
        kinds[inst] = "rest"
  return kinds


def profile_jax(fn, hlo: str, n: int) -> dict[str, float]:
  """ms per step of each kind (`KINDS`, wall time) and 'step' (the program's wall time), from a jax.profiler
  trace."""
  import gzip
  import json
  import tempfile
  import jax
  kinds = hlo_kinds(hlo)
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(n):
        fn()
    path = next(os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if f.endswith("perfetto_trace.json.gz"))
    events = json.load(gzip.open(path))["traceEvents"]
  out = dict.fromkeys(KINDS + ("step",), 0.0)
  # 'step': the union of the executions and their thunks (a loop's body nests an executor; a one-thunk program
  # runs without one).
  end = -1.0
  for t0, t1 in sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("ph") == "X" and
                       (e["name"] == "ThunkExecutor::Execute" or e["name"] in kinds)):
    if t1 > end:
      out["step"] += t1 - max(t0, end)
      end = t1
  # XLA:CPU runs independent thunks side by side: each stretch of wall time is split evenly among the thunks
  # running in it, so the kinds add up to the time the program was busy.
  marks = sorted((t, d, kinds[e["name"]]) for e in events if e.get("ph") == "X" and e["name"] in kinds
                 for t, d in ((e["ts"], 1), (e["ts"] + e["dur"], -1)))
  active, last = collections.Counter(), None
  for t, d, kind in marks:
    busy = sum(active.values())
    if busy and last is not None:
      for k, c in active.items():
        out[k] += (t - last) * c / busy
    active[kind] += d
    last = t
  return {k: v / 1e3 / n for k, v in out.items()}


def profile_torch(fn, n: int) -> dict[str, float]:
  """ms per step of each kind (`KINDS`, ops' self CPU time) and 'step' (their sum)."""
  from torch.profiler import ProfilerActivity, profile
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(n):
      fn()
  out = dict.fromkeys(KINDS, 0.0)
  for e in prof.key_averages():
    kind = "matmul" if e.key in TORCH_MATMUL else "layout copies" if e.key in TORCH_COPIES else "rest"
    out[kind] += e.self_cpu_time_total
  out["step"] = sum(out.values())
  return {k: v / 1e3 / n for k, v in out.items()}


def profile_table(rows: list[tuple[str, dict, dict, float]], what: str = "step") -> str:
  """rows (config, torch profile, jax profile, torch's timed ms) -> the markdown table and what bounds it."""
  lines = [f"| config | side | profiled {what} ms | matmul ms | layout copies ms | rest ms |",
           "|---|---|---|---|---|---|"]
  for name, pt, jt, p_step in rows:
    for side, prof in (("PyTorch", pt), ("umt_jax", jt)):
      lines.append(f"| {name} | {side} | {prof['step']:.0f} | {prof['matmul']:.0f} | {prof['layout copies']:.0f} | "
                   f"{prof['rest']:.0f} |")
    lines.append(f"| {name} | 1.3× needs umt_jax ≤ | {p_step / 1.3:.0f} | umt_jax's matmuls are "
                 f"{jt['matmul'] / max(pt['matmul'], 1e-9):.2f}× PyTorch's | | |")
  return "\n".join(lines)


def timed(fn, n: int) -> list[float]:
  out = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--configs", default="s112,s224,ti112")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--official", default="", help="an OpenGVLab/unmasked_teacher checkout (optional)")
  ap.add_argument("--device", default="cpu", help="PyTorch's device: cpu or cuda (jax uses its default backend)")
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--profile", action="store_true",
                  help="after the timing, profile --steps steps per side and split them into matmul / copies / rest")
  args = ap.parse_args()
  import torch
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  import jax
  where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({os.cpu_count()} cores), torch "
        f"{torch.__version__} on {args.device} ({where}), {args.dtype}; medians of {args.rounds}×{args.steps} steps, "
        f"interleaved; load average at start {os.getloadavg()[0]:.1f}")
  rows, profiles, fwd_profiles = [], [], []
  for name in args.configs.split(","):
    if name not in CONFIGS:
      raise SystemExit(f"--configs: unknown {name!r}; expected some of {sorted(CONFIGS)}")
    variant, frames, size, batch = CONFIGS[name]
    t0 = time.perf_counter()
    j_train, j_infer, j_hlo, j_fwd_hlo = jax_side(variant, frames, size, batch, args.dtype)
    t_build = time.perf_counter() - t0
    p_train, p_infer = torch_side(variant, frames, size, batch, args.official, args.device, args.dtype)
    for f in (j_train, p_train, j_infer, p_infer):  # warm-up (jax: first run after compile; torch: allocator)
      f()
    times = {k: [] for k in ("jt", "pt", "ji", "pi")}
    for _ in range(args.rounds):
      times["pt"] += timed(p_train, args.steps)
      times["jt"] += timed(j_train, args.steps)
      times["pi"] += timed(p_infer, args.steps)
      times["ji"] += timed(j_infer, args.steps)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    rows.append((name, variant, frames, size, batch, med, t_build))
    if args.profile:
      profiles.append((name, profile_torch(p_train, args.steps), profile_jax(j_train, j_hlo, args.steps), med["pt"]))
      fwd_profiles.append((name, profile_torch(p_infer, args.steps), profile_jax(j_infer, j_fwd_hlo, args.steps),
                           med["pi"]))
    print(f"{name}: jax build+compile {t_build:.1f} s; train {med['pt']:.0f} ms torch vs {med['jt']:.0f} ms jax; "
          f"infer {med['pi']:.0f} vs {med['ji']:.0f} ms", file=sys.stderr)
  print(f"load average at end {os.getloadavg()[0]:.1f} (other processes share these cores: above the thread "
        "count, PyTorch's OpenMP suffers more than XLA's pool)")
  src = "official checkout" if args.official else "torch_ref"
  print(f"\n| config | stage-1 step, PyTorch ({src}) ms | umt_jax ms | speed-up | classifier fwd, PyTorch ms "
        f"| umt_jax ms | speed-up |\n|---|---|---|---|---|---|---|")
  for name, variant, frames, size, batch, m, _ in rows:
    print(f"| {variant}/16, {frames}×{size}², batch {batch} ({name}) | {m['pt']:.0f} | {m['jt']:.0f} | "
          f"**{m['pt'] / m['jt']:.2f}×** | {m['pi']:.0f} | {m['ji']:.0f} | **{m['pi'] / m['ji']:.2f}×** |")
  if profiles:
    print("\nWhere the stage-1 step goes (PyTorch: ops' self CPU time; umt_jax: the compiled program's thunks, "
          "classified from its HLO):\n")
    print(profile_table(profiles))
    print("\nWhere the classifier forward goes (the same split):\n")
    print(profile_table(fwd_profiles, "forward"))


if __name__ == "__main__":
  main()
