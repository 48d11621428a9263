"""Building blocks with explicit params, logical axis names and separate compute / param dtypes.

Every param is created through `param_with_axes`, so `nn.get_partition_spec` sees logical names
(embed, mlp, heads, kv, ...) that the config's rules map onto the mesh. Attention is written with
einsum + `jax.nn.dot_product_attention` (cuDNN flash attention on GPU); flax's DenseGeneral / MHA are
avoided because they break when a mesh and logical rules are both active. `Embed` and `QKVAttention`
(separate query/key/value, self- or cross-attention, attention-prob dropout) serve the BERT text encoder.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jax.Array]

# Logical names of the main activations (mapped by the same rules as params).
ACT_TOKENS = ("activation_batch", "activation_length", "activation_embed")


def param_with_axes(module: nn.Module, name: str, init: Initializer, shape: Sequence[int],
                    axes: Sequence[str | None], dtype: Dtype) -> jax.Array:
  """A param boxed with logical axis names (unboxed transparently inside apply)."""
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


def constrain(x: jax.Array, axes: Sequence[str | None] = ACT_TOKENS) -> jax.Array:
  """Logical sharding constraint on an activation; a no-op without a mesh and rules."""
  return nn.with_logical_constraint(x, tuple(axes))


def torch_linear_init(fan_in: int) -> Initializer:
  """PyTorch's default Linear/Conv init, U(±1/√fan_in) (kaiming_uniform a=√5), for weights and biases."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def xavier_uniform(fan_in: int, fan_out: int) -> Initializer:
  """xavier_uniform for a kernel of any shape whose torch view is [fan_out, fan_in]."""
  bound = np.sqrt(6.0 / (fan_in + fan_out))
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def trunc_normal(std: float) -> Initializer:
  """timm's trunc_normal_(std) with cut-offs at ±2 (in absolute units, as timm uses them)."""
  lo, hi = -2.0 / std, 2.0 / std
  return lambda key, shape, dtype=jnp.float32: std * jax.random.truncated_normal(key, lo, hi, shape, dtype)


class Dense(nn.Module):
  """y = x · kernel + bias over the last `in_ndim` input axes; kernel (*in, *features) with logical axes.

  The torch view of the kernel is `weight` [prod(features), prod(in)] (see umt_jax.convert.layout).
  """
  features: int | tuple[int, ...]
  axes: tuple[str | None, ...] = ("embed", "mlp")  # in axes + out axes
  in_ndim: int = 1
  use_bias: bool = True
  kernel_init: Initializer | None = None  # default: xavier_uniform (the UMT / VideoMAE init)
  bias_init: Initializer = nn.initializers.zeros
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    feats = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    in_shape = x.shape[-self.in_ndim:]
    init = self.kernel_init or xavier_uniform(int(np.prod(in_shape)), int(np.prod(feats)))
    kernel = param_with_axes(self, "kernel", init, in_shape + feats, self.axes, self.param_dtype)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.in_ndim)
    if self.use_bias:
      bias = param_with_axes(self, "bias", self.bias_init, feats, self.axes[self.in_ndim:], self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class LayerNorm(nn.Module):
  """LayerNorm computed in fp32 (as CLIP's fp16-safe LayerNorm), output cast to `dtype`."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = param_with_axes(self, "scale", nn.initializers.ones, (d,), (self.axis_name,), self.param_dtype)
    bias = param_with_axes(self, "bias", nn.initializers.zeros, (d,), (self.axis_name,), self.param_dtype)
    # One-pass statistics, squares taken before either mean (flax's order). The two-pass form
    # `mean((x - mean)^2)` lets XLA:CPU fuse every later layer's residual cotangent into each
    # layer's weight-grad input, which made the backward pass quadratic in depth (issue 15).
    x32 = x.astype(jnp.float32)
    sq = jax.lax.square(x32)
    mean, mean2 = x32.mean(-1), sq.mean(-1)
    var = jnp.maximum(0.0, mean2 - jax.lax.square(mean))
    mul = jax.lax.rsqrt(var[..., None] + self.epsilon) * scale.astype(jnp.float32)
    y = (x32 - mean[..., None]) * mul + bias.astype(jnp.float32)
    return y.astype(self.dtype)


def drop_path(x: jax.Array, rate: float, rng: jax.Array | None, deterministic: bool) -> jax.Array:
  """Stochastic depth: zero whole samples with prob `rate`, scale survivors by 1/(1-rate)."""
  if deterministic or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


def quick_gelu(x: jax.Array) -> jax.Array:
  """CLIP's QuickGELU, x·σ(1.702x)."""
  return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: jax.Array) -> jax.Array:
  """torch.nn.GELU() default, x·(1 + erf(x/√2))/2 in torch's own form; JAX's default is the tanh approximation.
  `jax.nn.gelu(approximate=False)` computes erfc(-x/√2), which XLA:CPU evaluates with two branches and an exp
  (5% of a stage-1 step); erf is one clamped rational polynomial."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


class Mlp(nn.Module):
  """Linear → act → Linear, with configurable torch names (fc1/fc2 for ViT, c_fc/c_proj for CLIP)."""
  hidden: int
  act: Callable[[jax.Array], jax.Array] = exact_gelu
  names: tuple[str, str] = ("fc1", "fc2")
  kernel_init: Initializer | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
    h = Dense(self.hidden, axes=("embed", "mlp"), name=self.names[0], **kw)(x)
    h = constrain(self.act(h), ("activation_batch", "activation_length", "activation_mlp"))
    return Dense(d, axes=("mlp", "embed"), name=self.names[1], **kw)(h)


def attention_impl(requested: str | None, dtype: Dtype, head_dim: int, lengths: tuple[int, int] = (0, 0),
                   bias: bool = False) -> str | None:
  """'auto' -> 'cudnn' (flash attention) where cuDNN supports it: a GPU of compute capability >= 8.0, bf16 or
  fp16, head_dim a multiple of 8 up to 128, and with a bias or mask even query and key `lengths` (cuDNN's
  backward with a bias needs them); on CPU 'blocked' (`dot_attention`); else 'xla'. Other values pass through
  (None means XLA too: `jax.nn.dot_product_attention` does not pick cuDNN by itself)."""
  if requested != "auto":
    return requested
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return "blocked"
  ok = (dev.platform == "gpu" and float(getattr(dev, "compute_capability", "0") or 0) >= 8.0
        and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
        and not (bias and any(n % 2 for n in lengths)))
  return "cudnn" if ok else "xla"


def cudnn_bias(x: jax.Array | None, q: jax.Array, k: jax.Array) -> jax.Array | None:
  """A bias (float) or mask (bool) broadcastable to (B, H, L, S) -> (B, 1 or H, L, S), a bias in q's dtype.
  cuDNN's fused attention takes only a bias of the full query and key lengths (jax checks it), so a per-key
  one (B, 1, 1, S): padding masks, vid-TLDR's log-mass, is broadcast over the queries here."""
  if x is None:
    return None
  x = x.reshape((1,) * (4 - x.ndim) + x.shape)
  x = jnp.broadcast_to(x, (q.shape[0], x.shape[1], q.shape[1], k.shape[1]))
  return x if x.dtype == jnp.bool_ else x.astype(q.dtype)


def heads_first(x: jax.Array) -> jax.Array:
  """(B, L, H, Dh) -> (B, H, L, Dh). The attention's batched dots run on heads-first operands: XLA:CPU's fused
  attention from the (B, L, H, Dh) layout was 2.3× slower in the forward (CLIP teacher at 224²: 114 vs 49 ms a
  layer) and up to 1.4× in forward + backward, the transposes included (benchmarks in the README)."""
  return x.transpose(0, 2, 1, 3)


def attention_logits(q: jax.Array, k: jax.Array, bias: jax.Array | None, scale: float,
                     causal: bool = False) -> jax.Array:
  """q (B, L, H, Dh), k (B, S, H, Dh), bias broadcastable to (B, H, L, S) -> (q·scale) kᵀ + bias, fp32
  (B, H, L, S)."""
  logits = jnp.einsum("bhld,bhsd->bhls", heads_first(q * jnp.asarray(scale, q.dtype)), heads_first(k),
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if causal:  # the value jax.nn.dot_product_attention uses for masked logits
    keep = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
    logits = jnp.where(keep, logits, -0.7 * float(jnp.finfo(jnp.float32).max))
  return logits


# XLA:CPU writes the (B, H, L, S) fp32 logits and probabilities out; past the last-level cache that traffic, not
# the dots, bounds the attention (S/16 at 8×224², 1568 tokens: 319 ms a layer, q·kᵀ alone 136 and the softmax 96,
# PyTorch's flash kernel 100). A few heads at a time keep each block's logits in cache: 154-162 ms there.
BLOCK_ABOVE = 16 << 20  # bytes of fp32 logits beyond which 'blocked' attention runs in blocks of heads
BLOCK_BYTES = 4 << 20  # a block's logits (at least 2 heads: one head a block is slower in the backward)


def head_block(b: int, h: int, l: int, s: int) -> int | None:
  """Heads (of the B·H) per block of 'blocked' attention on L queries × S keys, or None: one block (the batched
  dots). Measured on 2 cores (README, "umt_jax vs PyTorch"). XLA's cost analysis counts the loop's body once."""
  per_head = 4 * l * s
  return None if b * h * per_head <= BLOCK_ABOVE else max(2, BLOCK_BYTES // per_head)


def dot_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, scale: float,
                  causal: bool = False, impl: str | None = None, probs: jax.Array | None = None) -> jax.Array:
  """q (B, L, H, Dh), k/v (B, S, H, Dh), bias broadcastable to (B, H, L, S) -> (B, L, H, Dh).

  'cudnn': `jax.nn.dot_product_attention`'s flash kernel. Otherwise the official computation written out:
  softmax((q·scale) kᵀ + bias) v with fp32 logits and softmax, which XLA:CPU runs ~10% faster (fwd + bwd of
  a ViT-S stack) than `jax.nn.dot_product_attention`'s XLA path (a grouped-query vmap, the scale applied to the
  B·H·L·S logits). 'blocked' (what 'auto' picks on CPU): beyond BLOCK_ABOVE bytes of logits, `head_block` heads
  at a time, the same values per head. `probs`: those probabilities, when the caller has them already."""
  if impl == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, bias=cudnn_bias(bias, q, k), scale=scale, is_causal=causal,
                                        implementation="cudnn")
  if probs is not None:
    return attend(probs, v)
  (b, l, h, _), s = q.shape, k.shape[1]
  block = head_block(b, h, l, s) if impl == "blocked" else None
  if block is None:
    return attend(jax.nn.softmax(attention_logits(q, k, bias, scale, causal), axis=-1), v)
  heads = lambda x: heads_first(x).reshape((b * h, x.shape[1], 1, x.shape[3]))  # (B·H, L, 1, Dh)
  if bias is not None:
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    bias = jnp.broadcast_to(bias, (b, h) + bias.shape[2:]).reshape((b * h, 1, 1) + bias.shape[2:])

  def one_head(x):  # (L, 1, Dh) q, (S, 1, Dh) k / v, (1, 1, L or 1, S) bias -> (L, 1, Dh)
    qh, kh, vh, bh = x
    logits = attention_logits(qh[None], kh[None], bh, scale, causal)
    return attend(jax.nn.softmax(logits, axis=-1), vh[None])[0]

  out = jax.lax.map(one_head, (heads(q), heads(k), heads(v), bias), batch_size=block)
  return heads_first(out.reshape(b, h, l, -1))


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x (B, N, ...) , idx (B, K) int -> (B, K, ...)."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def attend(probs: jax.Array, v: jax.Array) -> jax.Array:
  """probs (B, H, L, S), v (B, S, H, Dh) -> probs · v (B, L, H, Dh), in v's dtype (the product heads-first)."""
  return heads_first(jnp.einsum("bhls,bhsd->bhld", probs.astype(v.dtype), heads_first(v)))


class Attention(nn.Module):
  """Multi-head self-attention over (B, N, D) tokens, in one of two official param layouts.

  layout 'beit' (UMT / VideoMAE student): `qkv.kernel` (D, 3, H, Dh) without bias, separate `q_bias`,
    `v_bias` (H, Dh) (k bias is fixed at 0), output `proj`.
  layout 'openai' (CLIP): `in_proj_weight` (D, 3, H, Dh) + `in_proj_bias` (3, H, Dh), output `out_proj`.
  `bias` (broadcastable to (B, H, N, N)) is added to the logits (proportional attention, masks).
  `return_attn` 'cls' / 'mean' also returns the head-averaged attention probabilities, fp32, of query 0
  (B, N) (the UMT teacher) / of every query (B, N, N) without `bias` (vid-TLDR saliency; the softmax is
  then written out instead of the fused kernel).
  `keep` (with 'cls'): a function of that attention -> rows (B, M) int; only those queries are computed and
  the call returns (y (B, M, D), attn, rows) (the teacher's last block, whose other rows nobody reads).
  """
  num_heads: int
  layout: str = "beit"
  causal: bool = False
  return_attn: str | None = None  # None, 'cls' or 'mean'
  kernel_init: Initializer | None = None
  attn_impl: str | None = None  # None / 'xla', 'cudnn' (GPU flash attention), 'blocked', 'auto' (attention_impl)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array | None = None,
               keep: Callable[[jax.Array], jax.Array] | None = None):
    d = x.shape[-1]
    h = self.num_heads
    dh = d // h
    if dh * h != d:
      raise ValueError(f"width {d} is not divisible by num_heads {h}")
    qkv_axes = ("embed", None, "heads", "kv")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.layout == "beit":
      qkv = Dense((3, h, dh), axes=qkv_axes, use_bias=False, kernel_init=self.kernel_init, name="qkv", **kw)(x)
      q_bias = param_with_axes(self, "q_bias", nn.initializers.zeros, (h, dh), ("heads", "kv"), self.param_dtype)
      v_bias = param_with_axes(self, "v_bias", nn.initializers.zeros, (h, dh), ("heads", "kv"), self.param_dtype)
      qkv_bias = jnp.stack([q_bias, jnp.zeros_like(q_bias), v_bias])
      out_name = "proj"
    elif self.layout == "openai":
      init = self.kernel_init or xavier_uniform(d, 3 * d)
      w = param_with_axes(self, "in_proj_weight", init, (d, 3, h, dh), qkv_axes, self.param_dtype)
      qkv = jnp.tensordot(x.astype(self.dtype), w.astype(self.dtype), axes=1)
      qkv_bias = param_with_axes(self, "in_proj_bias", nn.initializers.zeros, (3, h, dh), qkv_axes[1:],
                                 self.param_dtype)
      out_name = "out_proj"
    else:
      raise ValueError(f"attention layout must be 'beit' or 'openai', got {self.layout!r}")
    qkv = qkv + qkv_bias.astype(self.dtype)
    q, k, v = (constrain(qkv[..., i, :, :], ("activation_batch", "activation_length", "activation_heads",
                                              "activation_kv")) for i in range(3))
    scale = dh ** -0.5
    if self.return_attn not in (None, "cls", "mean"):
      raise ValueError(f"return_attn must be None, 'cls' or 'mean', got {self.return_attn!r}")
    if keep is not None and (self.return_attn != "cls" or self.causal or bias is not None):
      raise ValueError("keep selects queries by the CLS attention: it needs return_attn='cls', no causal mask "
                       "and no bias")
    attn = rows = None
    if self.return_attn == "cls":
      logits = jnp.einsum("bhd,bkhd->bhk", q[:, 0].astype(jnp.float32), k.astype(jnp.float32)) * scale
      if bias is not None:
        logits = logits + jnp.broadcast_to(bias, (x.shape[0], h, x.shape[1], x.shape[1]))[:, :, 0]
      attn = jax.nn.softmax(logits, axis=-1).mean(axis=1)
      if keep is not None:
        rows = keep(attn)
        q = gather_tokens(q, rows)
    if self.return_attn == "mean":
      if self.causal:
        raise ValueError("return_attn='mean' is for bidirectional attention (causal=True given)")
      logits = attention_logits(q, k, None, scale)
      probs = jax.nn.softmax(logits, axis=-1)
      attn = probs.mean(axis=1)
      if bias is not None:
        probs = jax.nn.softmax(logits + bias, axis=-1)
      out = dot_attention(q, k, v, bias, scale, probs=probs)
    else:
      impl = attention_impl(self.attn_impl, q.dtype, dh, (q.shape[1], k.shape[1]), bias is not None)
      out = dot_attention(q, k, v, bias, scale, self.causal, impl)
    y = Dense(d, axes=("heads", "kv", "embed"), in_ndim=2, kernel_init=self.kernel_init, name=out_name,
              **kw)(out)
    if self.return_attn is None:
      return y
    return (y, attn) if keep is None else (y, attn, rows)


class Embed(nn.Module):
  """Lookup table `embedding` (num, features) with logical axes; `attend` is the tied output projection.

  ids (...) int -> (..., features) in `dtype`; attend(x (..., features)) -> (..., num) fp32.
  """
  num_embeddings: int
  features: int
  axes: tuple[str | None, str | None] = ("vocab", "embed")
  embedding_init: Initializer = nn.initializers.normal(0.02)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = param_with_axes(self, "embedding", self.embedding_init, (self.num_embeddings, self.features),
                                     self.axes, self.param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype),
                      preferred_element_type=jnp.float32)


def multihead_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *,
                        dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
                        deterministic: bool = True, attn_impl: str | None = None) -> jax.Array:
  """q (B, L, H, Dh), k/v (B, S, H, Dh), mask bool broadcastable to (B, H, L, S) -> (B, L, H, Dh).

  With dropout on the attention probabilities (training, rate > 0) the softmax is written out, since
  `jax.nn.dot_product_attention` has no dropout; logits and softmax are fp32 either way.
  """
  dh = q.shape[-1]
  if deterministic or dropout_rate == 0.0:
    impl = attention_impl(attn_impl, q.dtype, dh, (q.shape[1], k.shape[1]), mask is not None)
    if impl == "cudnn":
      return jax.nn.dot_product_attention(q, k, v, mask=cudnn_bias(mask, q, k), scale=dh ** -0.5,
                                          implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=dh ** -0.5,  # text: short, one block
                                        implementation=None if impl is None else "xla")
  logits = jnp.einsum("bhld,bhsd->bhls", heads_first(q), heads_first(k), preferred_element_type=jnp.float32)
  logits = logits * dh ** -0.5  # after the product, as BERT scales
  if mask is not None:  # the value jax.nn.dot_product_attention uses: fully masked rows become uniform
    logits = jnp.where(mask, logits, -0.7 * float(jnp.finfo(jnp.float32).max))
  probs = jax.nn.softmax(logits, axis=-1)
  keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
  probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return attend(probs, v)


class QKVAttention(nn.Module):
  """Attention with separate `query`, `key`, `value` projections (the BERT layout), self- or cross-attention.

  x (B, L, Dq), kv (B, S, Dkv) or None (self-attention), mask bool broadcastable to (B, H, L, S)
  -> per-head context (B, L, H, Dh); the output projection is the caller's (BERT keeps it in a sibling module).
  Kernels (Din, H, Dh) with axes ('embed', 'heads', 'kv'), biases (H, Dh).
  """
  num_heads: int
  features: int  # H · Dh
  dropout_rate: float = 0.0  # on the attention probabilities
  kernel_init: Initializer | None = None
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, kv: jax.Array | None = None, mask: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    h = self.num_heads
    dh = self.features // h
    if dh * h != self.features:
      raise ValueError(f"width {self.features} is not divisible by num_heads {h}")
    kv = x if kv is None else kv
    kw = dict(axes=("embed", "heads", "kv"), kernel_init=self.kernel_init, dtype=self.dtype,
              param_dtype=self.param_dtype)
    axes = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
    q = constrain(Dense((h, dh), name="query", **kw)(x), axes)
    k = constrain(Dense((h, dh), name="key", **kw)(kv), axes)
    v = constrain(Dense((h, dh), name="value", **kw)(kv), axes)
    train = not deterministic and self.dropout_rate > 0.0
    return multihead_attention(q, k, v, mask, dropout_rate=self.dropout_rate,
                               dropout_rng=self.make_rng("dropout") if train else None,
                               deterministic=deterministic, attn_impl=self.attn_impl)
