"""Sharding as data: a named mesh from the config, logical axis rules, and shardings for states and batches.

Mesh axes are `data`, `fsdp`, `tensor` (MaxText names); a size of -1 fills the remaining devices. Params carry
logical names (embed, mlp, heads, ...) and the config's `rules` map them onto mesh axes. Two refinements on top
of plain rule lookup: params smaller than `min_fsdp_size` elements are replicated (sharding a LayerNorm scale
costs more in collectives than it saves), and a mesh axis that does not divide a dimension is dropped for that
dimension (tiny demo models on wide meshes).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Default rules (a config may replace them): FSDP over `embed`, tensor parallelism over heads and MLP.
DEFAULT_RULES = (
    ("activation_batch", BATCH_AXES), ("activation_length", None), ("activation_embed", None),
    ("activation_heads", "tensor"), ("activation_kv", None), ("activation_mlp", "tensor"),
    ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("kv", None), ("norm", None),
    ("clip_embed", None), ("decoder_embed", None), ("classes", None), ("vocab", "tensor"),
)


def mesh_shape(spec: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """{'data': -1, 'fsdp': 2, 'tensor': 1} -> sizes in MESH_AXES order; one -1 takes what is left."""
  unknown = set(spec) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; expected {MESH_AXES}")
  sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh {dict(spec)}: sizes must be positive, with at most one -1")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % fixed:
      raise ValueError(f"config.mesh {dict(spec)}: {num_devices} devices are not divisible by {fixed}")
    sizes[sizes.index(-1)] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"config.mesh {dict(spec)} needs {int(np.prod(sizes))} devices; {num_devices} are available")
  return tuple(sizes)


def make_mesh(spec: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(spec, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
  """ConfigDict-friendly rules (lists) -> hashable tuples, with names checked against the mesh axes."""
  out = []
  for name, axes in rules:
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    for a in (axes if isinstance(axes, tuple) else (axes,)):
      if a is not None and a not in MESH_AXES:
        raise ValueError(f"config.rules: {name!r} -> {a!r}; mesh axes are {MESH_AXES}")
    out.append((str(name), axes))
  return tuple(out)


def _fit(spec: P, shape: Sequence[int], mesh: Mesh, min_size: int) -> P:
  """Drop mesh axes that do not divide their dimension; replicate small params."""
  if int(np.prod(shape)) < min_size:
    return P()
  parts = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    keep = tuple(a for a in names if dim % mesh.shape[a] == 0)
    parts.append(None if not keep else keep[0] if len(keep) == 1 else keep)
  return P(*parts)


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules, min_fsdp_size: int = 0) -> Any:
  """Boxed (logically named) abstract params -> NamedShardings of the unboxed tree."""
  specs = nn.get_partition_spec(boxed_abstract)
  mesh_specs = jax.tree.map(lambda s: nn.logical_to_mesh_axes(tuple(s), rules), specs,
                            is_leaf=lambda x: isinstance(x, P))
  shapes = nn.meta.unbox(boxed_abstract)
  return jax.tree.map(lambda s, x: NamedSharding(mesh, _fit(s, x.shape, mesh, min_fsdp_size)), mesh_specs, shapes,
                      is_leaf=lambda x: isinstance(x, P))


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state: Any, p_shardings: Any,
                        mesh: Mesh) -> Any:
  """Moments follow their params; counters and other non-param state are replicated."""
  return optax.tree_map_params(tx, lambda _, s: s, abstract_opt_state, p_shardings,
                               transform_non_params=lambda _: NamedSharding(mesh, P()))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
