"""Converts the public TF1 checkpoints of the FVD and FAD feature networks to flat .npz files.

  python -m avdit.evaluation.convert_features --network=i3d \
      --checkpoint=kinetics-i3d/data/checkpoints/rgb_imagenet/model.ckpt --output=i3d.npz
  python -m avdit.evaluation.convert_features --network=vggish \
      --checkpoint=vggish_model.ckpt --pca_params=vggish_pca_params.npz --output=vggish.npz

Where to get the checkpoints (download them yourself; nothing here touches the network):
  * I3D (FVD): https://github.com/deepmind/kinetics-i3d, directory
    `data/checkpoints/rgb_imagenet/` (or `rgb_scratch/`): model.ckpt.{data-00000-of-00001,index}.
    Pass the prefix `.../model.ckpt` (or the directory).
  * VGGish (FAD): https://storage.googleapis.com/audioset/vggish_model.ckpt and, for the optional
    AudioSet PCA postprocessor, https://storage.googleapis.com/audioset/vggish_pca_params.npz.

The checkpoint is read with `tf.train.load_checkpoint` (TensorFlow is imported only here, only
when converting), every variable the network needs is checked for presence and shape against the
public layout (`i3d.checkpoint_shapes`, `vggish.checkpoint_shapes`), variables inside the
network's scope that it does not use are refused (they mean a different architecture), and
variables outside it (e.g. `global_step`, the `Flow/` stream of a two-stream checkpoint) are
ignored. The output .npz holds each array under its public name (I3D under `RGB/inception_i3d/`
whatever scope above `inception_i3d/` the checkpoint used; `RGB/` is preferred when a two-stream
checkpoint has several), the optional PCA arrays, and
`__network__` / `__width__` so that `i3d.load` / `vggish.load` refuse a file of the wrong network.

The file's keys and the loaders' shared checks (`read_weights`, `check_shapes`) are in
avdit/evaluation/feature_weights.py.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

from avdit.evaluation import feature_weights
from avdit.evaluation import i3d
from avdit.evaluation import vggish

NETWORKS = ("i3d", "vggish")


def _resolve_checkpoint(path: str) -> str:
  """The checkpoint prefix (V2: PREFIX.index + data; V1: one file) of a file path or directory
  (found without TensorFlow, so a wrong path fails fast)."""
  if os.path.isdir(path):
    state = os.path.join(path, "checkpoint")  # tf.train.Saver's state file names the latest.
    if os.path.isfile(state):
      with open(state) as f:
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"', f.read(), re.MULTILINE)
      if match:
        latest = os.path.join(path, match.group(1))  # join keeps an absolute path as is.
        if os.path.isfile(latest + ".index"):
          return latest
    candidates = sorted(f[:-len(".index")] for f in os.listdir(path) if f.endswith(".index"))
    if len(candidates) != 1:
      raise FileNotFoundError(f"no single TF checkpoint in directory {path!r} (found "
                              f"{len(candidates)} *.index files); pass the checkpoint prefix")
    return os.path.join(path, candidates[0])
  # A file of a V2 bundle names its prefix.
  prefix = re.sub(r"\.(index|meta|data-\d+-of-\d+)$", "", path)
  if prefix != path and os.path.isfile(prefix + ".index"):
    return prefix
  if os.path.isfile(path + ".index") or os.path.isfile(path):
    return path
  raise FileNotFoundError(f"TF checkpoint not found: neither {path + '.index'!r} (V2) nor "
                          f"{path!r} (V1) exists")


def _i3d_prefix(names, checkpoint: str) -> str:
  """The scope above `inception_i3d/` (the public RGB checkpoints: `RGB/`; prefer it if the
  checkpoint holds both streams)."""
  anchor = "inception_i3d/Conv3d_1a_7x7/conv_3d/w"
  prefixes = sorted(n[:-len(anchor)] for n in names if n.endswith(anchor))
  if not prefixes:
    raise ValueError(f"{checkpoint} has no I3D variables (no '*{anchor}'); is it a kinetics-i3d "
                     f"checkpoint?")
  return "RGB/" if "RGB/" in prefixes else prefixes[0]


def read_checkpoint(network: str, checkpoint_path: str, *,
                    width: float = 1.0) -> tuple[dict[str, np.ndarray], list[str]]:
  """(arrays under their public names, ignored variable names) of a TF checkpoint of `network`,
  checked against the public layout (at `width`, 1 for the public networks)."""
  if network not in NETWORKS:
    raise ValueError(f"unknown network {network!r}; expected one of {NETWORKS}")
  checkpoint = _resolve_checkpoint(checkpoint_path)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    reader = tf.train.load_checkpoint(checkpoint)
  except (tf.errors.OpError, ValueError) as error:
    raise ValueError(f"cannot read {checkpoint!r} as a TF checkpoint: {error}") from error
  shapes = reader.get_variable_to_shape_map()
  if network == "i3d":
    expected = i3d.checkpoint_shapes(width)
    public = i3d.CHECKPOINT_SCOPE.split("/")[0] + "/"
    prefix = _i3d_prefix(shapes, checkpoint)
    # Public name <- the checkpoint's name (same path below its own scope).
    to_public = {n: public + n[len(prefix):] for n in shapes
                 if n.startswith(prefix + "inception_i3d/")}
  else:
    expected = vggish.checkpoint_shapes(width)
    to_public = {n: n for n in shapes if n.startswith(vggish.CHECKPOINT_SCOPE + "/")}
  ignored = sorted(set(shapes) - set(to_public))
  feature_weights.check_shapes({p: tuple(shapes[n]) for n, p in to_public.items()}, expected,
                               checkpoint)
  arrays = {p: np.asarray(reader.get_tensor(n), np.float32) for n, p in to_public.items()}
  return arrays, ignored


def read_pca_params(path: str) -> dict[str, np.ndarray]:
  """`pca_eigen_vectors` [128, 128] and `pca_means` [128] of vggish_pca_params.npz."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"PCA parameters not found at {path!r} (the public file is "
                            f"https://storage.googleapis.com/audioset/vggish_pca_params.npz)")
  with np.load(path, allow_pickle=False) as data:
    missing = {"pca_eigen_vectors", "pca_means"} - set(data.files)
    if missing:
      raise ValueError(f"{path} lacks {sorted(missing)} (has {sorted(data.files)})")
    eigen = np.asarray(data["pca_eigen_vectors"], np.float32)
    means = np.asarray(data["pca_means"], np.float32)
  if eigen.shape != (128, 128) or means.size != 128:
    raise ValueError(f"{path}: expected pca_eigen_vectors [128, 128] and 128 pca_means, got "
                     f"{eigen.shape} and {means.shape}")
  return {"pca_eigen_vectors": eigen, "pca_means": means.reshape(128)}


def convert(network: str, checkpoint_path: str, output_path: str, *,
            pca_params_path: str | None = None, width: float = 1.0) -> dict[str, object]:
  """Writes the .npz of `network` read from a TF checkpoint; returns a summary (for the CLI).

  `width` is for width-reduced test checkpoints; the public networks have width 1.
  """
  if network not in NETWORKS:
    raise ValueError(f"unknown network {network!r}; expected one of {NETWORKS}")
  if pca_params_path is not None and network != "vggish":
    raise ValueError("--pca_params applies to --network=vggish only")
  out_dir = os.path.dirname(os.path.abspath(output_path))
  if not os.path.isdir(out_dir):
    raise FileNotFoundError(f"output directory {out_dir!r} does not exist")
  pca = {} if pca_params_path is None else read_pca_params(pca_params_path)
  arrays, ignored = read_checkpoint(network, checkpoint_path, width=width)
  arrays.update(pca)
  np.savez(output_path, **arrays, **{feature_weights.NETWORK_KEY: np.array(network),
                                     feature_weights.WIDTH_KEY: np.array(float(width))})
  return {"network": network, "output": output_path, "variables": len(arrays),
          "parameters": int(sum(a.size for a in arrays.values())), "ignored": ignored}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m avdit.evaluation.convert_features",
      description="Convert the public I3D (FVD) or VGGish (FAD) TF1 checkpoint to .npz.")
  parser.add_argument("--network", required=True, choices=NETWORKS)
  parser.add_argument("--checkpoint", required=True,
                      help="TF checkpoint prefix (e.g. .../rgb_imagenet/model.ckpt, "
                           "vggish_model.ckpt) or its directory")
  parser.add_argument("--output", required=True, help="the .npz to write")
  parser.add_argument("--pca_params", default=None,
                      help="vggish_pca_params.npz to include (VGGish only, optional)")
  parser.add_argument("--width", type=float, default=1.0,
                      help="channel width of the network (1 for the public checkpoints; "
                           "smaller only for width-reduced test checkpoints)")
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    summary = convert(args.network, args.checkpoint, args.output,
                      pca_params_path=args.pca_params, width=args.width)
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  ignored = summary["ignored"]
  print(f"wrote {summary['output']}: {summary['network']}, {summary['variables']} arrays, "
        f"{summary['parameters']:,} values"
        + (f"; ignored {len(ignored)} variable(s) outside the network: "
           f"{feature_weights.listing(ignored)}" if ignored else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
