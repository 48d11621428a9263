"""The loop every stage shares: sharded state, compiled step, checkpoints, preemption, logging, evaluation.

A trainer describes its stage as a `Task` (init, loss, frozen extras, data, eval) and calls `run`.
`build_step`: mesh + rules from the config -> abstract init (`jax.eval_shape`) -> param / optimizer shardings ->
`jax.jit` with in/out shardings and donation of the state. `run`: resume from the workdir's latest checkpoint
(state and data iterator) or initialise (optionally from a previous stage) -> `memory_analysis` and FLOPs before
step 0 -> steps, with (async) checkpoints every `checkpoint.every` steps, a save-and-exit on SIGTERM, a stop
naming the step on a non-finite loss, and step time split into waiting for data vs the rest.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from data import records
from umt_jax import bad_records, checkpoint, input_pipeline as ip, metrics, optim, params_io, sharding

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Task:
  """One training stage.

  init(rng) -> boxed params (logical names); loss(params, batch, rng, extra) -> (scalar, {name: scalar}).
  `extra` is a pytree of frozen arrays (e.g. the teacher's params) passed to every step, placed with
  `extra_shardings`. `load_init(abstract_params, shardings)`, if given, returns params that replace the random
  init of a fresh run (a previous stage's weights). `evaluate(params, step)` -> {name: value}.
  `flops_per_step`: the analytic count (umt_jax.flops) that TFLOP/s and MFU use; 0 falls back to XLA's. A
  task whose batches come in several shapes (stage 2: video and image steps) gives a function of the batch
  shapes {name: (shape, dtype)} instead; the loop compiles one step per shape and all share the state.
  A task without data still compiles (`build_step`): the mesh planner and the benchmarks use that.
  """
  init: Callable[[jax.Array], Any]
  loss: Callable[..., tuple[jax.Array, dict]]
  train_data: grain.MapDataset | None = None
  clips_per_epoch: int = 0
  flops_per_step: float | Callable[[dict], float] = 0.0
  extra: Any = None
  extra_shardings: Any = None
  depth: int = 0  # for layer-wise lr decay
  load_init: Callable[[Any, Any], Any] | None = None
  evaluate: Callable[[Any, int], dict] | None = None
  project: Callable[[Any], Any] | None = None  # applied to the params after every update (e.g. clamp stage 2's temp)


@dataclasses.dataclass
class Result:
  step: int
  params: Any
  history: list  # logged metric dicts
  preempted: bool = False
  eval: dict = dataclasses.field(default_factory=dict)


class _Preemption:
  """SIGTERM sets a flag; the loop saves at the next step boundary. All processes agree through an allgather."""

  def __init__(self):
    self.flag = False
    self._prev = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, *_):
    self.flag = True

  def reached(self) -> bool:
    if jax.process_count() == 1:
      return self.flag
    return bool(multihost_utils.process_allgather(np.int32(self.flag)).max())

  def restore(self):
    signal.signal(signal.SIGTERM, self._prev)


def setup_mesh(config: ml_collections.ConfigDict, devices=None) -> tuple[jax.sharding.Mesh, tuple]:
  """config.mesh over `devices` (default: all) and config.rules."""
  return sharding.make_mesh(config.mesh.to_dict(), devices), sharding.rules_from_config(config.rules)


def total_steps(config: ml_collections.ConfigDict, clips_per_epoch: int) -> tuple[int, float]:
  """-> (total steps, steps per epoch) from `num_epochs` (float) or an explicit `total_steps`."""
  per_epoch = clips_per_epoch / config.batch_size
  steps = config.get("total_steps", 0) or int(math.ceil(config.num_epochs * per_epoch))
  return steps, per_epoch


@dataclasses.dataclass
class TrainStep:
  """The jitted, sharded train step of a task and everything needed to feed it."""
  mesh: jax.sharding.Mesh
  rules: tuple
  fn: Any  # jax.jit(step)(state, batch, extra) -> (state, metrics); the state is donated
  init_params: Any  # jax.jit(key) -> random params, sharded
  init_state: Any  # jax.jit(params) -> state
  state_shardings: Any
  abstract_state: Any  # ShapeDtypeStructs
  param_shardings: Any
  abstract_params: Any

  def lower(self, batch_shapes: dict, extra: Any) -> Any:
    """AOT compile for global batch shapes {name: (shape, dtype)} (nothing runs) -> jax Compiled."""
    b_sh = sharding.batch_sharding(self.mesh)
    batch = {k: jax.ShapeDtypeStruct(s, d, sharding=b_sh) for k, (s, d) in batch_shapes.items()}
    with jax.set_mesh(self.mesh):
      return self.fn.lower(abstract_with(self.state_shardings, self.abstract_state), batch, extra).compile()


def build_step(config: ml_collections.ConfigDict, task: Task, steps: int, per_epoch: float,
               devices=None) -> TrainStep:
  """Mesh + rules from the config -> abstract init (`jax.eval_shape`) -> param and optimizer-state shardings ->
  the step, jitted with in/out shardings and donation of the state."""
  mesh, rules = setup_mesh(config, devices)
  key = jax.random.key(config.seed)
  boxed = jax.eval_shape(task.init, key)
  p_sh = sharding.param_shardings(boxed, mesh, rules, config.get("min_fsdp_size", 0))
  abstract_params = nn.meta.unbox(boxed)
  ocfg = ml_collections.ConfigDict({**config.optim.to_dict(), "batch_size": config.batch_size})
  tx, sched = optim.make_optimizer(ocfg, abstract_params, steps, per_epoch, task.depth)
  o_sh = sharding.opt_state_shardings(tx, jax.eval_shape(tx.init, abstract_params), p_sh, mesh)
  state_sh = {"step": sharding.replicated(mesh), "params": p_sh, "opt_state": o_sh}

  def init_state(params):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  def train_step(state, batch, extra):
    rng = jax.random.fold_in(key, state["step"])
    with nn.logical_axis_rules(rules):
      (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(state["params"], batch, rng, extra)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = jax.tree.map(lambda p, u: p + u.astype(p.dtype), state["params"], updates)
    if task.project is not None:
      params = task.project(params)
    out = {"loss": loss, "lr": sched(state["step"]), "grad_norm": optax.tree.norm(grads), **aux}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, out

  fn = jax.jit(train_step, in_shardings=(state_sh, sharding.batch_sharding(mesh), task.extra_shardings),
               out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  # Init runs once: on CPU, LLVM's optimisation of its random-number code costs seconds and saves nothing.
  once = {"xla_backend_optimization_level": 0} if mesh.devices.flat[0].platform == "cpu" else None
  init_params = jax.jit(lambda k: nn.meta.unbox(task.init(k)), out_shardings=p_sh, compiler_options=once)
  init_fn = jax.jit(init_state, in_shardings=(p_sh,), out_shardings=state_sh, donate_argnums=0,
                    compiler_options=once)
  return TrainStep(mesh, rules, fn, init_params, init_fn, state_sh, jax.eval_shape(lambda: init_state(abstract_params)), p_sh,
                   abstract_params)


def enable_compile_cache(config: ml_collections.ConfigDict) -> str:
  """Turns on JAX's persistent compilation cache in `config.compile_cache_dir` ('auto': $XDG_CACHE_HOME or
  ~/.cache, /umt_jax/xla; '': off) unless JAX_COMPILATION_CACHE_DIR / jax_compilation_cache_dir already names one
  -> the folder in use ('' when off). A second run of the same step loads it instead of compiling."""
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  path = config.get("compile_cache_dir", "auto")
  if path == "auto":
    path = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "umt_jax", "xla")
  if path:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # cache the one-off init programs too
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


def process_age() -> float:
  """Seconds since this process started (Linux /proc; elsewhere since umt_jax.train_loop was imported)."""
  try:
    with open("/proc/self/stat") as f:
      start = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
      return float(f.read().split()[0]) - start
  except (OSError, ValueError, IndexError):
    return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()
_RUNS: list[str] = []  # workdirs run in this process (the demo runs its stages in one)


def run(config: ml_collections.ConfigDict, workdir: str, task: Task, devices=None) -> Result:
  t_run = time.perf_counter()
  before = process_age() if not _RUNS else None  # a later run's start-up excludes the earlier runs
  _RUNS.append(workdir)
  enable_compile_cache(config)
  steps, per_epoch = total_steps(config, task.clips_per_epoch)
  ts = build_step(config, task, steps, per_epoch, devices)
  mesh = ts.mesh
  ckpt = checkpoint.Checkpointer(workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.get("async", True))
  data_iter = ip.make_iterator(task.train_data, config.data.get("workers", 0))
  restored = ckpt.restore_latest(ts.abstract_state, ts.state_shardings, data_iter)
  init_thread = None
  if restored is not None:
    start, state = restored
    print(f"resumed {workdir} from step {start}", file=sys.stderr)
  else:
    start = 0

    def fresh_state():
      t = time.perf_counter()
      if task.load_init is not None:
        params = task.load_init(ts.abstract_params, ts.param_shardings)
      else:
        params = ts.init_params(jax.random.key(config.seed))
      state = jax.block_until_ready(ts.init_state(params))
      return state, time.perf_counter() - t

    # A fresh state is built on a second thread while this one compiles the step: XLA:CPU compiles on one core.
    init_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="init")
    fresh = init_thread.submit(fresh_state)
  t_init = time.perf_counter() - t_run

  steps_by_shape: dict[tuple, tuple[Any, float | None]] = {}  # batch signature -> (compiled step, FLOPs)

  def compiled_for(batch: dict) -> tuple[Any, dict, float | None]:
    """The step compiled for this batch's shapes (AOT, memory + FLOPs printed the first time) -> (step, its
    array inputs, FLOPs per step)."""
    arrays = {k: v for k, v in batch.items() if isinstance(v, jax.Array)}
    sig = tuple(sorted((k, v.shape, str(v.dtype)) for k, v in arrays.items()))
    if sig not in steps_by_shape:
      shapes = {k: (v.shape, v.dtype) for k, v in arrays.items()}
      fn = ts.lower(shapes, task.extra)
      model_flops = task.flops_per_step(shapes) if callable(task.flops_per_step) else task.flops_per_step
      steps_by_shape[sig] = (fn, report_compiled(fn, config.batch_size, model_flops))
    fn, step_flops = steps_by_shape[sig]
    return fn, arrays, step_flops

  batch = ip.to_global(next(data_iter), mesh)
  t_compile = time.perf_counter()
  compiled_for(batch)
  t_compile = time.perf_counter() - t_compile
  t_beside = 0.0  # the fresh init's own time, on its thread
  if init_thread is not None:
    t_wait = time.perf_counter()
    state, t_beside = fresh.result()
    init_thread.shutdown()
    t_init += time.perf_counter() - t_wait
  writer = metrics.Writer(workdir, steps, config.batch_size, name=config.get("name", "train"),
                          peak=config.get("peak_flops", 0.0) or None)

  preempt, history, pending = _Preemption(), [], None
  result = Result(start, None, history)
  writer.start(start)
  try:
    for step in range(start + 1, steps + 1):
      if batch is None:
        t = time.perf_counter()
        batch = ip.to_global(next(data_iter), mesh)
        writer.data_wait(time.perf_counter() - t)
      fn, arrays, step_flops = compiled_for(batch)
      state, out = fn(state, arrays, task.extra)
      writer.count_flops(step_flops)
      batch = None
      if pending is not None:  # check the previous step's loss while this one runs (keeps dispatch async)
        _check_finite(*pending)
      pending = (step, out)
      if step == start + 1:  # the one blocking wait: time to the first step, for start-up regressions
        jax.block_until_ready(out)
        if jax.process_index() == 0:
          since = (f"{time.perf_counter() - t_run:.1f} s since this run began: " if before is None else
                   f"{process_age():.1f} s since process start: before the loop {before:.1f} s (imports, data, "
                   "teacher), ")
          print(f"time to first step {since}init {t_init:.1f} s (+ {t_beside:.1f} s beside the compile), step "
                f"compile {t_compile:.1f} s, first batch + step {time.perf_counter() - t_run - t_init - t_compile:.1f} s",
                file=sys.stderr)
      if step % config.log_every == 0 or step == steps:
        _check_finite(step, out)
        scalars = {k: np.asarray(v) for k, v in out.items()}
        scalars |= _skipped_records(data_iter, config.data.max_bad_records)
        history.append(writer.write(step, scalars) | {"step": step})
      if step % config.checkpoint.every == 0 or step == steps:
        ckpt.save(step, state, data_iter, config.to_dict())
      if task.evaluate and config.get("eval_every", 0) and step % config.eval_every == 0 and step < steps:
        writer.write(step, task.evaluate(state["params"], step))
      if preempt.reached():
        if step % config.checkpoint.every:
          ckpt.save(step, state, data_iter, config.to_dict())
        ckpt.wait()
        log.warning("SIGTERM: saved step %d in %s; exiting", step, workdir)
        result.preempted = True
        break
    if pending is not None:
      _check_finite(*pending)
    ckpt.wait()
    result.step, result.params = int(state["step"]), state["params"]
    if task.evaluate and not result.preempted:
      result.eval = task.evaluate(state["params"], result.step)
      writer.write(result.step, result.eval)
  finally:
    preempt.restore()
    writer.close()
  return result


def run_and_save(config: ml_collections.ConfigDict, workdir: str, task: Task, meta: dict, devices=None) -> Result:
  """`run`, then (unless preempted) the final params as `<workdir>/params.npz` with `meta`."""
  result = run(config, workdir, task, devices)
  if not result.preempted:
    save_final_params(workdir, result.params, meta)
  return result


def save_final_params(workdir: str, params: Any, meta: dict) -> str:
  """The trained params as `<workdir>/params.npz` (umt_jax.params_io, with export metadata: `umt-export-torch`
  turns it into an official PyTorch checkpoint). Collective: every process calls it; process 0 writes."""
  host = checkpoint.to_host(params)
  path = f"{workdir}/params.npz"
  if jax.process_index() == 0:
    params_io.save_params(path, host, meta)
  return path


def abstract_with(shardings: Any, tree: Any) -> Any:
  return jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shardings, tree)


def _skipped_records(data_iter: bad_records.SkipCount, limit: int) -> dict:
  """{'data/skipped_records': bad training records met so far, all processes} once there is one ({} before);
  raises records.CorruptRecord past `limit`. Collective (an allgather) on several processes."""
  n = data_iter.skipped
  if jax.process_count() > 1:
    n = int(multihost_utils.process_allgather(np.int32(n)).sum())
  if n > limit:
    raise records.CorruptRecord(
        f"{n} training records do not decode, more than config.data.max_bad_records={limit}; the latest (this "
        f"process): {'; '.join(data_iter.last_bad)}. Re-convert those videos (python -m data.prepare) or raise "
        "the limit; re-running resumes from the last checkpoint")
  return {"data/skipped_records": n} if n else {}


def _check_finite(step: int, out: dict) -> None:
  loss = float(np.asarray(out["loss"]))
  if not math.isfinite(loss):
    raise FloatingPointError(f"loss is {loss} at step {step}; stopping (the last good checkpoint is kept). "
                             "Lower the learning rate, enable optim.grad_clip, or check the data.")


def xla_cost(compiled: Any) -> dict:
  """XLA's cost analysis of one device's compiled program ({'flops', 'bytes accessed', ...}; {} if none)."""
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}


def report_compiled(compiled: Any, batch: int, model_flops: float = 0.0) -> float | None:
  """Prints the compiled step's memory analysis and FLOPs (MaxText does this before step 0) -> the FLOPs per
  step that TFLOP/s and MFU use: the analytic `model_flops` when given, else XLA's count."""
  mem = compiled.memory_analysis()
  if mem is not None and jax.process_index() == 0:
    gib = lambda b: b / 2 ** 30
    print(f"compiled step, per device: arguments {gib(mem.argument_size_in_bytes):.3f} GiB, outputs "
          f"{gib(mem.output_size_in_bytes):.3f} GiB, temporaries {gib(mem.temp_size_in_bytes):.3f} GiB, "
          f"aliased {gib(mem.alias_size_in_bytes):.3f} GiB", file=sys.stderr)
  # cost_analysis counts one device's program; the whole step is that times the device count.
  xla = float(xla_cost(compiled).get("flops", 0.0)) * jax.device_count()
  flops = model_flops or xla or None
  if flops and jax.process_index() == 0:
    print(f"step FLOPs {flops / 1e12:.4g} TFLOP ({flops / batch / 1e9:.3g} GFLOP per clip; "
          f"{'analytic' if model_flops else 'XLA'}), XLA's count {xla / 1e12:.4g} TFLOP", file=sys.stderr)
  return flops
