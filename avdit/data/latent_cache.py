"""Latent caches: a dataset's clips encoded once by the autoencoders, for AVDiT training.

    clips (pipeline.make_source) -> LearnedLatents.encode (jitted, in batches)
      -> <cache_dir>/latents.array_record   one record per clip: npz bytes of
                                            video [N, h, w, d_v], audio [l_a, d_a] (float32), index
      -> <cache_dir>/meta.json              written last: shapes, per-channel mean/std over the
                                            whole cache, both autoencoders' identities (kind,
                                            constructor arguments, checkpoint step, workdir),
                                            the clip geometry and the data it came from

A cache without meta.json is incomplete (an interrupted encode) and is refused; a cache whose
recorded autoencoders or shapes differ from the config's is refused with what differs. Reading
is random access (grain's ArrayRecordDataSource), so the training pipeline shuffles, shards and
checkpoints a cache exactly like clips.
"""
from __future__ import annotations

import io
import json
import os
import time

import jax
import numpy as np
from absl import logging
from array_record.python import array_record_module
import grain

from avdit import workdir as workdir_lib

RECORDS = "latents.array_record"
META = "meta.json"


def _to_bytes(video, audio, index) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, video=np.asarray(video, np.float32), audio=np.asarray(audio, np.float32),
           index=np.asarray(index, np.int64))
  return buffer.getvalue()


def _from_bytes(record: bytes) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(record)) as f:
    return {"video": f["video"], "audio": f["audio"], "index": f["index"]}


def identity_for_meta(latent_space) -> dict:
  """The autoencoders' identities without volatile fields (workdir paths may move)."""
  return {m: {k: v for k, v in ident.items() if k != "workdir"}
          for m, ident in latent_space.identity.items()}


def write_cache(source, data_config, layout, latent_space, cache_dir: str,
                num_clips: int | None = None, batch_size: int = 8) -> dict:
  """Encodes the first `num_clips` (default all) clips of `source`; returns the meta dict.

  `source` is the clip source of `data_config` (`pipeline.make_source`), which the meta records;
  the caller makes it, since the input pipeline reads latent caches and so imports this module.
  """
  os.makedirs(cache_dir, exist_ok=True)
  meta_path = os.path.join(cache_dir, META)
  if os.path.exists(meta_path):
    os.remove(meta_path)  # rewriting: the cache is incomplete until meta.json is back
  num_clips = len(source) if num_clips is None else min(num_clips, len(source))
  encode = jax.jit(latent_space.encode)
  writer = array_record_module.ArrayRecordWriter(os.path.join(cache_dir, RECORDS),
                                                 "group_size:1")
  sums, sq_sums, counts = {}, {}, {}
  start, last_log = time.time(), time.time()
  for first in range(0, num_clips, batch_size):
    clips = [source[i] for i in range(first, min(first + batch_size, num_clips))]
    latents = jax.device_get(encode(np.stack([c["video"] for c in clips]),
                                    np.stack([c["audio"] for c in clips])))
    for j, clip in enumerate(clips):
      writer.write(_to_bytes(latents["video"][j], latents["audio"][j], clip["index"]))
    for name, x in latents.items():
      x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
      sums[name] = sums.get(name, 0.0) + x.sum(0)
      sq_sums[name] = sq_sums.get(name, 0.0) + np.square(x).sum(0)
      counts[name] = counts.get(name, 0) + x.shape[0]
    if time.time() - last_log > 10:
      logging.info("encoded %d / %d clips (%.1f clips/s)", first + len(clips), num_clips,
                   (first + len(clips)) / (time.time() - start))
      last_log = time.time()
  writer.close()
  stats = {}
  for name in sums:
    mean = sums[name] / counts[name]
    std = np.sqrt(np.maximum(sq_sums[name] / counts[name] - np.square(mean), 0.0))
    stats[f"{name}_mean"] = mean.astype(np.float32).tolist()
    stats[f"{name}_std"] = np.maximum(std, 1e-3).astype(np.float32).tolist()
  meta = {"num_clips": num_clips, "video_latent_shape": list(layout.video_latent_shape),
          "audio_latent_shape": list(layout.audio_latent_shape), "stats": stats,
          "autoencoders": identity_for_meta(latent_space),
          "data": {k: v for k, v in data_config.to_dict().items() if k != "cache_dir"},
          "seconds": time.time() - start}
  workdir_lib.write_text(cache_dir, META, json.dumps(meta, indent=1))
  logging.info("wrote %d clips of latents to %s in %.1fs", num_clips, cache_dir, meta["seconds"])
  return meta


def read_meta(cache_dir: str) -> dict:
  path = os.path.join(cache_dir, META)
  if not os.path.exists(path):
    detail = ("an interrupted encode (rerun --mode=encode)"
              if os.path.exists(os.path.join(cache_dir, RECORDS)) else "no cache here")
    raise FileNotFoundError(f"latent cache {cache_dir} has no {META}: {detail}")
  with open(path) as f:
    return json.load(f)


def check_meta(meta: dict, layout, expected_autoencoders: dict | None, cache_dir: str) -> None:
  """Clear errors when the cache was written for other shapes or by other autoencoders."""
  problems = []
  for name, shape in (("video", layout.video_latent_shape), ("audio", layout.audio_latent_shape)):
    if tuple(meta[f"{name}_latent_shape"]) != tuple(shape):
      problems.append(f"{name} latents {tuple(meta[f'{name}_latent_shape'])} != the config's "
                      f"{tuple(shape)}")
  if expected_autoencoders is not None:
    for modality, expected in expected_autoencoders.items():
      got = meta["autoencoders"].get(modality)
      if got != expected:
        differs = sorted(k for k in set(expected) | set(got or {})
                         if (got or {}).get(k) != expected.get(k))
        problems.append(f"the {modality} autoencoder differs ({', '.join(differs)}): cache "
                        f"{ {k: (got or {}).get(k) for k in differs} } vs config "
                        f"{ {k: expected.get(k) for k in differs} }")
  if problems:
    raise ValueError(f"latent cache {cache_dir} does not match: " + "; ".join(problems) +
                     ". Re-encode with --mode=encode.")


class LatentCacheSource:
  """Random-access cached latents: {"video" [N, h, w, d_v], "audio" [l_a, d_a], "index"}."""

  def __init__(self, cache_dir: str, layout, expected_autoencoders: dict | None = None):
    self.meta = read_meta(cache_dir)
    check_meta(self.meta, layout, expected_autoencoders, cache_dir)
    self.cache_dir = cache_dir
    self._records = grain.sources.ArrayRecordDataSource([os.path.join(cache_dir, RECORDS)])
    if len(self._records) != self.meta["num_clips"]:
      raise ValueError(f"latent cache {cache_dir} holds {len(self._records)} records, its meta "
                       f"says {self.meta['num_clips']}: re-encode")

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    return _from_bytes(self._records[int(index)])

  def __repr__(self) -> str:
    return f"LatentCacheSource({self.cache_dir}, {len(self)} clips)"

  @property
  def stats(self) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float32) for k, v in self.meta["stats"].items()}
