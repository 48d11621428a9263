"""cuDNN flash attention against XLA attention: is the fused kernel selected, do the two agree, how fast is each.

  python -m benchmarks.attention_check [--dtype bfloat16] [--shapes 64x312x12x64,16x1568x12x64] [--runs 10]

Shapes are batch x tokens x heads x head_dim (defaults: B/16 stage 1 at 8x224², 312 visible tokens, per-device
batch 64; B/16 fine-tuning / inference, 1568 tokens, batch 16). Each shape runs three cases: no bias, a per-key
bias (B, 1, 1, S) (vid-TLDR's log-mass after a merge) and a padding mask (B, 1, 1, S) (BERT's), each through
`layers.dot_attention` / `layers.multihead_attention` as the models call them, with impl 'xla' and 'cudnn'.
Per row: whether the compiled forward + backward calls cuDNN's fused attention (a `__cudnn$fmha` custom call),
the largest difference of the output and of dq, dk, dv against an fp32 XLA reference, and the median time of
forward + backward. Without a CUDA GPU the cudnn rows say why they did not run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from umt_jax.models import layers

CASES = ("no bias", "per-key bias", "padding mask")


def inputs(shape: tuple[int, int, int, int], case: str, dtype, reference: bool = False) -> tuple:
  """-> (q, k, v, bias or mask or None) for one case, fixed seeds; q, k, v rounded to `dtype` (the reference
  takes the same rounded values in fp32, so the errors are the kernel's own)."""
  b, n, h, d = shape
  q, k, v = (jax.random.normal(jax.random.key(i), shape, jnp.float32).astype(dtype) for i in range(3))
  if reference:
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  extra = None
  if case == "per-key bias":  # log of token masses 1..4, as after merging
    extra = jnp.log(jax.random.randint(jax.random.key(3), (b, 1, 1, n), 1, 5).astype(jnp.float32))
  elif case == "padding mask":  # the last quarter of each sequence is padding
    extra = jnp.broadcast_to(jnp.arange(n) < n - n // 4, (b, 1, 1, n))
  return q, k, v, extra


def loss_fn(case: str, impl: str | None):
  """(q, k, v, extra) -> scalar; a fixed random projection of the output, so every output element has a gradient."""
  def f(q, k, v, extra):
    if case == "padding mask":
      out = layers.multihead_attention(q, k, v, extra, attn_impl=impl)
    else:
      out = layers.dot_attention(q, k, v, extra, q.shape[-1] ** -0.5, impl=impl)
    w = jax.random.normal(jax.random.key(9), out.shape, jnp.float32)
    return jnp.sum(out.astype(jnp.float32) * w), out
  return f


def run_case(shape, case: str, impl: str, dtype, runs: int, reference: bool = False) -> dict:
  """Compiles forward + backward for one impl -> {'cudnn_call', 'out', 'grads', 'ms'} (arrays as fp32 numpy)."""
  args = inputs(shape, case, dtype, reference)
  step = jax.jit(jax.value_and_grad(loss_fn(case, impl), argnums=(0, 1, 2), has_aux=True))
  compiled = step.lower(*args).compile()
  hlo = compiled.as_text()
  (_, out), grads = compiled(*args)
  jax.block_until_ready(grads)
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  return {"cudnn_call": "__cudnn$fmha" in hlo, "out": np.asarray(out, np.float32),
          "grads": [np.asarray(g, np.float32) for g in grads], "ms": 1e3 * statistics.median(times)}


def compare(shape, case: str, dtype, runs: int, impls=("xla", "cudnn")) -> list[dict]:
  """One row per impl: the fp32 XLA reference's error and time, or the reason it did not run."""
  ref = run_case(shape, case, "xla", dtype, 1, reference=True)
  rows = []
  for impl in impls:
    try:
      r = run_case(shape, case, impl, dtype, runs)
    except Exception as e:  # e.g. cudnn without a CUDA GPU
      rows.append({"impl": impl, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"})
      continue
    err_out = float(np.max(np.abs(r["out"] - ref["out"])))
    err_grad = max(float(np.max(np.abs(g - g0)) / (np.max(np.abs(g0)) or 1.0))
                   for g, g0 in zip(r["grads"], ref["grads"]))
    rows.append({"impl": impl, "cudnn_call": r["cudnn_call"], "err_out": err_out, "err_grad": err_grad,
                 "ms": r["ms"]})
  return rows


def main(argv=None) -> list[str]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shapes", default="64x312x12x64,16x1568x12x64")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--runs", type=int, default=10)
  args = ap.parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  dev = jax.devices()[0]
  lines = [f"{dev.device_kind} ({dev.platform}), jax {jax.__version__}, {args.dtype}; errors against fp32 XLA: "
           "output max |diff|, gradients max |diff| / max |grad|",
           "", "| shape (B×N×H×Dh) | case | impl | cuDNN fmha called | output err | grad err | fwd+bwd ms |",
           "|---|---|---|---|---|---|---|"]
  print("\n".join(lines), flush=True)
  for text in args.shapes.split(","):
    try:
      shape = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
      shape = ()
    if len(shape) != 4:
      raise SystemExit(f"--shapes: {text!r} is not batch x tokens x heads x head_dim (e.g. 64x312x12x64)")
    for case in CASES:
      for r in compare(shape, case, dtype, args.runs):
        if "error" in r:
          line = f"| {text} | {case} | {r['impl']} | did not run: {r['error']} | | | |"
        else:
          line = (f"| {text} | {case} | {r['impl']} | {'yes' if r['cudnn_call'] else 'no'} | {r['err_out']:.2e} "
                  f"| {r['err_grad']:.2e} | {r['ms']:.2f} |")
        print(line, flush=True)
        lines.append(line)
  return lines


if __name__ == "__main__":
  main()
