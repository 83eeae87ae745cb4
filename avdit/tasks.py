"""Tasks as masks over (modality, segment): which elements are the clean condition (SPEC §3).

A task is a boolean `condition_mask` [M, N] (M = 2: video, audio): True elements are fed clean
with t = 0, False ones are generated. Named tasks expand to a small task-spec syntax that also
writes any other mask:

    spec    := clause (";" clause)*          e.g. "v:0,-1;a:0,-1"   (= av_inpaint)
    clause  := modality ":" items            modality: v | video | a | audio
    items   := "*" | item ("," item)*        "*" = every segment
    item    := int | int ".." int            inclusive range; negative ints count from the end

The empty spec (or "joint"/"none") conditions on nothing. Masks are part of the clip layout's
vocabulary: the samplers, the evaluation and the contrastive terms (diffusion/cdcd.py) all use them.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from avdit import layout as layout_lib

NAMED_TASKS = {
    "joint": "",
    "a2v": "a:*",
    "v2a": "v:*",
    "av_continue": "v:0..1;a:0..1",  # paper's 1.5 s continuation: 5 frames + 0.625 s audio given
    "av_continue_2s": "v:0;a:0",  # first frame + its 0.125 s of audio given
    "av_inpaint": "v:0,-1;a:0,-1",  # first and last segments given, the middle generated
}
_MODALITY = {"v": layout_lib.VIDEO, "video": layout_lib.VIDEO,
             "a": layout_lib.AUDIO, "audio": layout_lib.AUDIO}
_ITEM = re.compile(r"^(-?\d+)(?:\.\.(-?\d+))?$")


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  spec: str
  condition_mask: np.ndarray  # bool [M, N]; True = clean condition

  @property
  def generate_mask(self) -> np.ndarray:
    return ~self.condition_mask

  @property
  def is_unconditional(self) -> bool:
    return not self.condition_mask.any()


def _segment_index(text: str, num_segments: int, spec: str) -> int:
  index = int(text)
  if not -num_segments <= index < num_segments:
    raise ValueError(f"task {spec!r}: segment {index} is outside this clip's segments "
                     f"0..{num_segments - 1} (N = {num_segments})")
  return index % num_segments


def parse_task(spec: str, layout: layout_lib.ClipLayout) -> Task:
  """A task from a name in NAMED_TASKS or a task-spec string; clear errors for bad input."""
  name = spec.strip()
  text = NAMED_TASKS.get(name, name)
  if name == "none":
    text = ""
  if name not in NAMED_TASKS and name != "none" and ":" not in name and name:
    raise ValueError(f"unknown task {spec!r}: use one of {sorted(NAMED_TASKS)} or a task spec "
                     "like 'v:0..1;a:0..1'")
  n = layout.num_segments
  mask = np.zeros((layout_lib.NUM_MODALITIES, n), bool)
  for clause in filter(None, (c.strip() for c in text.split(";"))):
    modality, sep, items = clause.partition(":")
    if not sep or modality.strip() not in _MODALITY:
      raise ValueError(f"task {spec!r}: clause {clause!r} must be '<v|a>:<segments>'")
    m = _MODALITY[modality.strip()]
    for item in (i.strip() for i in items.split(",")):
      if item == "*":
        mask[m, :] = True
        continue
      match = _ITEM.match(item)
      if not match:
        raise ValueError(f"task {spec!r}: cannot read segment item {item!r} (int, a..b or *)")
      lo = _segment_index(match.group(1), n, spec)
      hi = _segment_index(match.group(2), n, spec) if match.group(2) is not None else lo
      if hi < lo:
        raise ValueError(f"task {spec!r}: empty range {item!r}")
      mask[m, lo:hi + 1] = True
  if name in ("av_continue", "av_inpaint") and n < 3:
    raise ValueError(f"task {name!r} needs at least 3 time-segments, this clip has N = {n}")
  if mask.all():
    raise ValueError(f"task {spec!r} conditions on every (modality, segment) of this clip "
                     f"(N = {n}): nothing is left to generate")
  return Task(name=name or "joint", spec=text, condition_mask=mask)


def parse_tasks(specs: str, layout: layout_lib.ClipLayout) -> list[Task]:
  """Tasks separated by '|', as configs list them: "joint|a2v|v:0;a:0..1"."""
  return [parse_task(p, layout) for p in specs.split("|") if p.strip()]
