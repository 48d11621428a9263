"""orbax behind one small interface: per-stage checkpoint directories holding the train state, the grain
iterator and the config.

  <workdir>/checkpoints/<step>/{state, data, config}

Saves are asynchronous; `keep` newest are kept. Restores always pass target shardings (so a checkpoint written
on one mesh restores onto any other). A latest checkpoint that fails to restore (corrupted, half-deleted) is
moved aside to `checkpoints/corrupt-<step>` with a warning and the previous one is used. Frozen teachers are
never in here: they are loaded from their own files by the trainer.

Failures: an unwritable checkpoint directory (read-only filesystem, a path under a file) fails when the
Checkpointer is made, before training starts. A save that fails part way (disk full, permission denied) raises
naming the directory; orbax writes into `<step>.orbax-checkpoint-tmp*` and renames only a complete save, so the
previous checkpoint stays the latest and restorable, and the leftovers of a failed or killed save are removed
at the next start.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import warnings
from typing import Any, NoReturn

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
# When tensorstore fails on a corrupt checkpoint, orbax drops a metadata coroutine it had created; Python warns
# when it is collected, later and from another thread. `restore_latest` has already logged the failure and
# moved on, so this says nothing new.
warnings.filterwarnings("ignore", message="coroutine 'Store._get_array_metadatas' was never awaited",
                        category=RuntimeWarning)


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
  """Checkpoints of one stage's workdir."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._async = async_save
    self._keep = keep
    self._saving: int | None = None  # the step of a save that may still be running
    _check_writable(self.directory)
    if jax.process_index() == 0:
      for name in os.listdir(self.directory):  # a failed or killed save's partial directory
        if ".orbax-checkpoint-tmp" in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    self._open()

  def _open(self):
    opts = ocp.CheckpointManagerOptions(max_to_keep=self._keep, enable_async_checkpointing=self._async,
                                        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=opts)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator | None, config: dict) -> None:
    """Queues an (async) save of `state` (a pytree of jax.Arrays), the iterator position and the config."""
    items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    try:  # also raises what a previous async save hit
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:
      self._failed(self._saving or step, e)
    self._saving = step

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      self._failed(self._saving, e)
    self._saving = None

  def _failed(self, step: int | None, err: Exception) -> NoReturn:
    kept = [s for s in self.manager.all_steps() if s != step]
    raise OSError(f"saving checkpoint step {step} in {self.directory} failed ({_summary(err)}); the previous "
                  f"checkpoint ({max(kept) if kept else 'none'}) is kept. Free disk space or fix the permissions, "
                  "then re-run the same command to resume from it") from err

  def restore_latest(self, state_like: Any, shardings: Any, data_iter: grain.DatasetIterator | None
                     ) -> tuple[int, Any] | None:
    """-> (step, state) from the newest checkpoint that restores, or None when there is none. The iterator is
    restored in place."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      items = {"state": ocp.args.StandardRestore(_abstract(state_like, shardings))}
      if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # noqa: BLE001  (any failure means this checkpoint is unusable)
        self._set_aside(step, e)
        continue
      return step, restored["state"]
    return None

  def _set_aside(self, step: int, err: Exception) -> None:
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"corrupt-{step}")
    log.warning("checkpoint %s does not restore (%s); moved it to %s and trying the previous one",
                src, _summary(err), dst)
    os.replace(src, dst)
    self._open()


def _summary(err: Exception) -> str:
  """'Type: first line' of an (often many-line, tensorstore) error."""
  return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:500]}"


def _check_writable(directory: str) -> None:
  """Creates `directory` and writes a probe file in it: an unwritable workdir fails at start-up, naming it."""
  probe = os.path.join(directory, f".write-test-{secrets.token_hex(4)}")
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise OSError(e.errno, f"the checkpoint directory {directory} is not writable ({e.strerror or e}); give a "
                  "--workdir on a writable filesystem") from e


def restore_subtree(workdir: str, subtree: tuple[str, ...], like: Any, shardings: Any) -> tuple[Any, int]:
  """Params of a previous stage: the latest state's `subtree` (e.g. ('params', 'encoder')), shape-checked against
  `like` (the new model's abstract subtree) and placed with `shardings` -> (tree, step)."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"init_from workdir {workdir!r} has no checkpoints/ folder (did that stage run?)")
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
              "data": grain.checkpoint.CheckpointHandler()}
  # Only read (never saved through); not `read_only=True`, which logs three warnings on every restore.
  mngr = ocp.CheckpointManager(directory, item_handlers=handlers, options=ocp.CheckpointManagerOptions(create=False))
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"init_from workdir {workdir!r}: no finished checkpoint in {directory}")
  node = mngr.item_metadata(step)["state"]
  for k in subtree:
    if k not in node:
      raise KeyError(f"{directory}/{step}: the state has no {'/'.join(subtree)!r} (missing {k!r}; "
                     f"it has {sorted(node)})")
    node = node[k]
  node = dict(node)
  have = {"/".join(map(str, p)): tuple(x.shape) for p, x in _flat(node)}
  want = {"/".join(map(str, p)): tuple(x.shape) for p, x in _flat(like)}
  missing = sorted(set(want) - set(have))
  wrong = sorted(f"{k}: checkpoint {have[k]} vs model {want[k]}" for k in set(want) & set(have) if have[k] != want[k])
  if missing or wrong:
    raise ValueError(f"checkpoint {directory}/{step} does not fit the model under {'/'.join(subtree)}: "
                     f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}; shape mismatches {wrong[:8]}")
  target = _abstract(like, shardings)
  for k in reversed(subtree):
    target = {k: target}
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  out = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)))["state"]
  for k in subtree:
    out = out[k]
  mngr.close()
  return out, step


def _flat(tree: Any) -> list[tuple[tuple, Any]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return [(tuple(getattr(k, "key", k) for k in p), x) for p, x in leaves]


def to_host(tree: Any) -> Any:
  """Gathered numpy copy of a (possibly sharded, multi-process) pytree."""
  from jax.experimental import multihost_utils
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)
