r"""MAGVIT-v2 and SoundStream speed: encode/decode throughput and train-step MFU.

  python -m avdit.tools.benchmark_autoencoders [--which=magvit2,soundstream] [--settings=tiny] \
      [--batch=1] [--json=PATH]
  python -m avdit.tools.benchmark_autoencoders --settings=tiny,paper     (paper sizes too, guarded)

For each autoencoder (--which) and size (--settings; tiny = `TINY_KWARGS` / `TINY_CONFIG`,
paper = `PAPER_KWARGS` / `PAPER_CONFIG`), in float32 on the default device:

* Clips. MAGVIT-v2: video [B, F, H, W, 3] in [-1, 1], 17x128x128 (paper) or 9x32x32 (tiny, the
  clip of configs/avdit_synthetic.py:tiny). SoundStream: waveforms [B, L], L = 34 000 samples
  (paper: 17 frames at 8 fps, 16 kHz) or 18 000 (tiny: the tiny config's 9 frames at 8 fps).
  Random inputs: the convolutions' cost does not depend on the values.
* Encode and decode throughput (clips/s): `model.encode(x)` and `model.decode(z)` (z the
  continuous latents of x; the quantizer is not part of either), each jitted, timed after one
  warm-up call, the best of --repeats calls (fewer when the calls add up to more than
  --max_timing_seconds; the count is reported). Parameter counts, total and per encoder/decoder.
* Train step and MFU, as `avdit.tools.benchmark` reports them for AVDiT: a plain Adam step (no
  discriminator, no GAN/perceptual losses: the generator network alone) on the reconstruction
  loss mean((decode(encode(x)) - x)^2) with the quantizer bypassed (the continuous latents AVDiT
  uses; the LFQ/RVQ are not timed: at paper size the RVQ's code search is ~2 GFLOP per clip,
  ~7% of SoundStream's forward), the state donated, compiled ahead, timed after one untimed
  step, the median of --train_steps steps. Model FLOPs of a step = 3 x the FLOPs of the forward
  decode(encode(x)) at the step's batch. For these conv nets the forward count is XLA's, not
  analytic: `jax.jit(forward).lower(...).compile().cost_analysis()["flops"]`, XLA's own count of
  the compiled forward (2 per multiply-add; a convolution counts only the taps that fall inside
  the input, a few % below a dense count: 6% for a 3x3x3 conv on 17x64x64 with SAME padding,
  more on the 9-frame tiny clips). XLA's count of the whole compiled train step (backward and
  Adam included) is reported next to it as a check of the 3x rule. MFU = model FLOPs / median
  step time / `hardware.peak_flops_per_device()` (on a CPU: the measured fp32 2048^2 matmul
  peak).
* Guard. Encode and decode are measured at batch 1 first; if 3 x (encode + decode time at batch
  1) x --batch, the estimated train-step time, exceeds --max_step_seconds (60), the train step
  is skipped and encode/decode are reported at batch 1 only; the output says so ("guarded").
  Otherwise encode/decode are re-measured at --batch (when > 1) and the step is run. The paper
  MAGVIT-v2 (9.7 TFLOP per clip forward) is guarded on a CPU; its encode and decode at batch 1
  take about a minute each (warm-up included), so paper sizes are opt-in (--settings=...,paper).
"""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags
from flax import nnx

from avdit import hardware
from avdit.models import layers
from avdit.models import magvit2
from avdit.models import soundstream

MODELS = ("magvit2", "soundstream")
SETTINGS = ("tiny", "paper")
# Clip geometry per setting (see the module docstring).
VIDEO_CLIP = {"tiny": (9, 32, 32), "paper": (17, 128, 128)}  # frames, height, width
AUDIO_SAMPLES = {"tiny": 18_000, "paper": 34_000}

_WHICH = flags.DEFINE_list("which", list(MODELS), "Autoencoders to measure: magvit2, soundstream.")
_SETTINGS = flags.DEFINE_list("settings", ["tiny"],
                              "Sizes to measure: tiny and/or paper (paper is guarded, see the "
                              "module docstring).")
_BATCH = flags.DEFINE_integer("batch", 1, "Clips per encode/decode call and per train step.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed encode/decode calls (best reported).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 3, "Timed train steps (median reported).")
_MAX_STEP_SECONDS = flags.DEFINE_float(
    "max_step_seconds", 60.0, "Skip the train step (and measure encode/decode at batch 1 only) "
    "when its estimated time exceeds this.")
_MAX_TIMING_SECONDS = flags.DEFINE_float(
    "max_timing_seconds", 60.0, "Stop repeating a timed encode/decode call once the timed calls "
    "add up to this (at least one is always timed).")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate of the step.")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


# --------------------------------------------------------------------------------------------
# Models and inputs
# --------------------------------------------------------------------------------------------
def build(which: str, setting: str) -> nnx.Module:
  if which == "magvit2":
    kwargs = magvit2.PAPER_KWARGS if setting == "paper" else magvit2.TINY_KWARGS
    return magvit2.Magvit2(**kwargs, rngs=nnx.Rngs(0))
  if which == "soundstream":
    kwargs = soundstream.PAPER_CONFIG if setting == "paper" else soundstream.TINY_CONFIG
    return soundstream.SoundStream(**kwargs, rngs=nnx.Rngs(0))
  raise ValueError(f"unknown autoencoder {which!r}; known: {', '.join(MODELS)}")


def input_shape(which: str, setting: str, batch: int) -> tuple[int, ...]:
  if which == "magvit2":
    return (batch, *VIDEO_CLIP[setting], 3)
  return (batch, AUDIO_SAMPLES[setting])


def make_input(which: str, setting: str, batch: int) -> jax.Array:
  rng = np.random.default_rng(0)
  x = rng.uniform(-1.0, 1.0, input_shape(which, setting, batch))
  if which == "soundstream":
    x *= 0.5  # waveform well inside [-1, 1]
  return jnp.asarray(x, jnp.float32)


def param_counts(module: nnx.Module) -> dict[str, int]:
  """Scalars of the nnx.Param leaves: total, encoder (`enc_*`) and decoder (`dec_*`)."""
  state = nnx.state(module, nnx.Param)
  part = lambda prefix: layers.count_params(
      {k: v for k, v in state.items() if str(k).startswith(prefix)})
  return {"total": layers.count_params(state), "encoder": part("enc"), "decoder": part("dec")}


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------
def xla_flops(compiled) -> float:
  """XLA's FLOP count of a compiled computation (`cost_analysis()["flops"]`)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0]
  return float(cost["flops"])


def best_seconds(fn, *args, repeats: int, max_seconds: float) -> tuple[float, list[float]]:
  """(best, all) wall times of fn(*args) after one untimed warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  while len(times) < max(1, repeats) and sum(times) < max_seconds:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times), times


def benchmark_encode_decode(graphdef, params, rest, x, *, repeats: int,
                            max_seconds: float) -> dict:
  """Encode and decode seconds (best of repeats), clips/s and XLA FLOPs at x's batch."""

  def encode(params, x):
    return nnx.merge(graphdef, params, rest).encode(x)

  def decode(params, z):
    return nnx.merge(graphdef, params, rest).decode(z)

  batch = x.shape[0]
  encode_c = jax.jit(encode).lower(params, x).compile()
  z = jax.block_until_ready(encode_c(params, x))
  decode_c = jax.jit(decode).lower(params, z).compile()
  out = {"batch": batch, "latent_shape": list(z.shape)}
  for name, compiled, arg in (("encode", encode_c, x), ("decode", decode_c, z)):
    best, times = best_seconds(compiled, params, arg, repeats=repeats, max_seconds=max_seconds)
    flops = xla_flops(compiled)
    out[name] = {"seconds": best, "seconds_all": times, "clips_per_second": batch / best,
                 "xla_flops_per_clip": flops / batch, "flop_per_second": flops / best}
  return out


def benchmark_train_step(graphdef, params, rest, x, *, steps: int, learning_rate: float,
                         peak: float) -> dict:
  """A jitted Adam step on mean((decode(encode(x)) - x)^2): median time, FLOPs and MFU."""
  length = x.shape[1]

  def forward(params, x):
    model = nnx.merge(graphdef, params, rest)
    reconstruction = model.decode(model.encode(x))
    return reconstruction[:, :length]  # SoundStream decodes whole hops; MAGVIT-v2 is exact

  def loss_fn(params, x):
    return jnp.mean(jnp.square(forward(params, x) - x))

  optimizer = optax.adam(learning_rate)

  def train_step(params, opt_state, x):
    loss, grads = jax.value_and_grad(loss_fn)(params, x)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  forward_flops = xla_flops(jax.jit(forward).lower(params, x).compile())
  opt_state = optimizer.init(params)
  # Own copies: the step donates its state, and `params` stays usable for the caller.
  params = jax.tree.map(jnp.copy, params)
  step_c = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, x).compile()
  start = time.perf_counter()
  params, opt_state, loss = step_c(params, opt_state, x)
  jax.block_until_ready(loss)
  first = time.perf_counter() - start
  times = []
  for _ in range(max(1, steps)):
    start = time.perf_counter()
    params, opt_state, loss = step_c(params, opt_state, x)
    jax.block_until_ready((params, loss))
    times.append(time.perf_counter() - start)
  step_seconds = float(np.median(times))
  flops_per_step = 3 * forward_flops
  return {"batch": x.shape[0], "step_seconds": step_seconds, "step_seconds_all": times,
          "first_step_seconds_excl_compile": first,
          "forward_xla_flops": forward_flops, "flops_per_step": flops_per_step,
          "train_step_xla_flops": xla_flops(step_c),
          "flop_per_second": flops_per_step / step_seconds,
          "mfu": flops_per_step / step_seconds / peak,
          "clips_per_second": x.shape[0] / step_seconds, "loss": float(loss)}


def benchmark_one(which: str, setting: str, *, batch: int, repeats: int, train_steps: int,
                  max_step_seconds: float, max_timing_seconds: float, learning_rate: float,
                  peak: float) -> dict:
  """Everything of the module docstring for one autoencoder at one size."""
  start = time.perf_counter()
  model = build(which, setting)
  build_seconds = time.perf_counter() - start
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  del model
  out = {"model": which, "setting": setting, "requested_batch": batch,
         "input_shape_per_clip": list(input_shape(which, setting, 1)[1:]),
         "num_params": param_counts(nnx.merge(graphdef, params, rest)),
         "build_seconds": build_seconds}
  timing = dict(repeats=repeats, max_seconds=max_timing_seconds)
  at_1 = benchmark_encode_decode(graphdef, params, rest, make_input(which, setting, 1), **timing)
  estimate = 3 * (at_1["encode"]["seconds"] + at_1["decode"]["seconds"]) * batch
  out["estimated_step_seconds"] = estimate
  out["guarded"] = estimate > max_step_seconds
  if out["guarded"]:
    out["note"] = (f"train step skipped: estimated {estimate:.0f} s > --max_step_seconds="
                   f"{max_step_seconds:g}; encode/decode measured at batch 1 only")
    out["encode_decode"] = at_1
    out["train_step"] = None
    return out
  x = make_input(which, setting, batch)
  out["encode_decode"] = (at_1 if batch == 1 else
                          benchmark_encode_decode(graphdef, params, rest, x, **timing))
  out["train_step"] = benchmark_train_step(graphdef, params, rest, x, steps=train_steps,
                                           learning_rate=learning_rate, peak=peak)
  return out


def main(argv):
  del argv
  for name in _WHICH.value:
    if name not in MODELS:
      raise app.UsageError(f"--which: unknown autoencoder {name!r}; known: {', '.join(MODELS)}")
  for name in _SETTINGS.value:
    if name not in SETTINGS:
      raise app.UsageError(f"--settings: unknown size {name!r}; known: {', '.join(SETTINGS)}")
  print(f"devices: {jax.devices()}")
  peak, peak_source = hardware.peak_flops_per_device()
  print(f"peak: {peak / 1e9:.1f} GFLOP/s ({peak_source})")
  out = {"devices": [str(d) for d in jax.devices()], "peak_flop_per_second": peak,
         "peak_source": peak_source, "flops_source": "XLA cost_analysis of the compiled "
         "forward (not analytic); train step = 3x forward", "results": []}
  for which in _WHICH.value:
    for setting in _SETTINGS.value:
      r = benchmark_one(which, setting, batch=_BATCH.value, repeats=_REPEATS.value,
                        train_steps=_TRAIN_STEPS.value, max_step_seconds=_MAX_STEP_SECONDS.value,
                        max_timing_seconds=_MAX_TIMING_SECONDS.value,
                        learning_rate=_LEARNING_RATE.value, peak=peak)
      out["results"].append(r)
      p, ed = r["num_params"], r["encode_decode"]
      print(f"{which} {setting} {tuple(r['input_shape_per_clip'])}: {p['total'] / 1e6:.2f}M "
            f"params ({p['encoder'] / 1e6:.2f}M encoder, {p['decoder'] / 1e6:.2f}M decoder)")
      for name in ("encode", "decode"):
        e = ed[name]
        print(f"  {name} (batch {ed['batch']}): {e['seconds'] * 1e3:.1f} ms "
              f"(best of {len(e['seconds_all'])}), {e['clips_per_second']:.2f} clips/s, "
              f"{e['xla_flops_per_clip'] / 1e9:.2f} GFLOP/clip (XLA), "
              f"{e['flop_per_second'] / 1e9:.1f} GFLOP/s")
      step = r["train_step"]
      if step is None:
        print(f"  GUARDED: {r['note']}")
      else:
        print(f"  train step (batch {step['batch']}, Adam, reconstruction loss, no "
              f"discriminator): {step['step_seconds'] * 1e3:.1f} ms (median of "
              f"{len(step['step_seconds_all'])}), {step['flops_per_step'] / 1e9:.2f} GFLOP "
              f"(3x XLA forward; XLA's count of the whole step "
              f"{step['train_step_xla_flops'] / 1e9:.2f}), "
              f"{step['flop_per_second'] / 1e9:.1f} GFLOP/s, MFU {step['mfu']:.3f}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  app.run(main)
