"""The converted .npz of a feature network (I3D for FVD, VGGish for FAD): its keys and checks.

`convert_features` writes these files; `i3d.load` and `vggish.load` read them back with
`read_weights` and check them against their network's public layout with `check_shapes`. Both
sides share this module, so the loaders (numpy only) never import the converter (TensorFlow).
"""
from __future__ import annotations

import os

import numpy as np

NETWORK_KEY = "__network__"
WIDTH_KEY = "__width__"
_LISTED = 8  # Names listed per problem in an error message.


def listing(names) -> str:
  """The sorted names, at most `_LISTED` of them spelled out (for error messages)."""
  names = sorted(names)
  more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
  return ", ".join(names[:_LISTED]) + more


def check_shapes(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
                 source: str) -> None:
  """Raises a ValueError naming the missing, unexpected and wrongly shaped variables of `shapes`
  ({name: shape}) against `expected`."""
  missing = set(expected) - set(shapes)
  extra = set(shapes) - set(expected)
  wrong = [f"{name} {tuple(shapes[name])} (expected {tuple(expected[name])})"
           for name in sorted(set(expected) & set(shapes))
           if tuple(shapes[name]) != tuple(expected[name])]
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing variable(s): {listing(missing)}")
  if extra:
    problems.append(f"{len(extra)} unexpected variable(s): {listing(extra)}")
  if wrong:
    problems.append(f"{len(wrong)} shape mismatch(es): {'; '.join(wrong[:_LISTED])}")
  if problems:
    raise ValueError(f"{source} does not match the network's public layout: "
                     + " | ".join(problems))


def read_weights(path: str, network: str) -> tuple[dict[str, np.ndarray], float]:
  """(arrays by name, width) of a converted .npz of `network`; clear errors for a missing file or
  a file converted for another network."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{network} weights not found at {path!r}. Convert the public checkpoint once with "
        f"`python -m avdit.evaluation.convert_features --network={network} --checkpoint=... "
        f"--output={path}` (see avdit/evaluation/convert_features.py for where to get it).")
  with np.load(path, allow_pickle=False) as data:
    arrays = {name: data[name] for name in data.files}
  stored = str(arrays.pop(NETWORK_KEY, ""))
  if stored != network:
    raise ValueError(f"{path} holds {stored or 'no'} network weights (key {NETWORK_KEY!r}), "
                     f"expected {network!r}; was it written by convert_features?")
  width = float(arrays.pop(WIDTH_KEY, 1.0))
  return arrays, width
