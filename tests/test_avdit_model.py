"""Tests of the AVDiT model (SPEC §5) at tiny shapes.

Layout: 9 frames at 8 fps, 32x32 -> N = 3 segments of 4x4 latents (48 video tokens at p = 1,
12 at p = 2) and 57 audio latents, so L = 105 (or 69) tokens and R = 6 conditioning rows.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from avdit.layout import ClipLayout
from avdit.models import layers
from avdit.models.avdit import AVDiT, flops_per_example
from avdit.models.layers import count_params
from configs import avdit_synthetic

LOGICAL_AXIS_VOCABULARY = {
    "embed", "mlp", "heads", "head_dim", "modulation", "lora_rank", "video_in", "audio_in",
    "video_out", "audio_out", "timestep_freq", "tokens_video", "tokens_audio", "segments", "rows",
    "modality", "norm"}


def make_layout(patch_size: int = 1) -> ClipLayout:
  return ClipLayout(num_frames=9, fps=8.0, height=32, width=32, sample_rate=16000,
                    video_channels=48, audio_channels=40, spatial_factor=8, temporal_factor=4,
                    audio_hop=320, patch_size=patch_size)


def make_config(**overrides) -> ml_collections.ConfigDict:
  config = dict(width=32, depth=2, num_heads=4, mlp_ratio=4.0, patch_size=1,
                timestep_embed_dim=16, adaln="lora", adaln_lora_rank=4, qk_norm=True,
                self_condition=True, dtype="float32", remat="none", attention="xla",
                attention_chunk=16)
  config.update(overrides)
  return ml_collections.ConfigDict(config)


def make_model(seed: int = 0, **overrides) -> tuple[AVDiT, ClipLayout]:
  config = make_config(**overrides)
  layout = make_layout(config.patch_size)
  return AVDiT(config, layout, rngs=nnx.Rngs(seed)), layout


def make_inputs(layout: ClipLayout, batch: int = 2, seed: int = 0):
  """Random latents and integer timestep vectors [B, 2, N] (numpy: nothing to compile)."""
  rng = np.random.default_rng(seed)
  noisy = {name: jnp.asarray(rng.standard_normal(shape), jnp.float32)
           for name, shape in layout.latent_shapes(batch).items()}
  timesteps_bmn = jnp.asarray(rng.integers(0, 1001, (batch, 2, layout.num_segments)), jnp.int32)
  return noisy, timesteps_bmn


# One compiled program per model configuration: much cheaper than compiling every op eagerly.
predict = nnx.jit(lambda model, noisy, timesteps, self_cond=None: model(noisy, timesteps,
                                                                         self_cond))


def randomize_params(model: nnx.Module, seed: int = 1, scale: float = 0.2) -> None:
  """Adds noise to every parameter so zero-initialized gates and outputs become non-zero.

  The noise comes from numpy: a jax.random call per parameter shape would compile dozens of
  small programs, which dominates the run time of these tiny tests.
  """
  rng = np.random.default_rng(seed)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(
      lambda p: p + jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), params))


def reference_token_rows(layout: ClipLayout) -> np.ndarray:
  """Row of every token from first principles: (t, h, w) video order, then audio by segment."""
  rows = []
  for token in range(layout.num_tokens):
    if token < layout.num_video_tokens:
      rows.append(token // layout.video_tokens_per_segment)  # modality 0, segment t
    else:
      audio_index = token - layout.num_video_tokens
      rows.append(layout.num_segments + int(layout.segment_of_audio[audio_index]))
  return np.asarray(rows)


@pytest.mark.parametrize("adaln,patch_size,self_condition", [
    ("lora", 1, True), ("full", 2, True), ("lora", 2, False), ("full", 1, False)])
def test_output_shapes_dtypes_and_zero_at_init(adaln, patch_size, self_condition):
  model, layout = make_model(adaln=adaln, patch_size=patch_size, self_condition=self_condition)
  noisy, timesteps_bmn = make_inputs(layout)
  timesteps_bmn = timesteps_bmn.astype(jnp.float32)  # float timesteps (the others use int)
  out = predict(model, noisy, timesteps_bmn)
  if self_condition:
    # The previous x̂0 estimate as self-conditioning input.
    out_sc = predict(model, noisy, timesteps_bmn, jax.tree.map(lambda x: 0.5 * x, noisy))
  else:
    with pytest.raises(ValueError, match="self_cond"):
      model(noisy, timesteps_bmn, self_cond=noisy)
    out_sc = out
  for prediction in (out, out_sc):
    assert set(prediction) == {"video", "audio"}
    for name in ("video", "audio"):
      assert prediction[name].shape == noisy[name].shape
      assert prediction[name].dtype == jnp.float32
      # Zero-initialized final projection (DiT): the prediction is exactly zero at init.
      assert not np.any(np.asarray(prediction[name]))


def test_nonzero_after_perturbing_final_kernel():
  model, layout = make_model(adaln="full")
  noisy, timesteps_bmn = make_inputs(layout)
  for dense in (model.final.video_out, model.final.audio_out):
    key = jax.random.key(dense.kernel.shape[1])
    dense.kernel[...] = 0.1 * jax.random.normal(key, dense.kernel.shape)
  out = predict(model, noisy, timesteps_bmn)
  for name in ("video", "audio"):
    per_token = np.abs(np.asarray(out[name])).max(axis=-1)
    assert np.all(per_token > 0), name
    assert np.all(np.isfinite(out[name]))


@pytest.mark.parametrize("adaln", ["full", "lora"])
def test_gathered_modulation_matches_per_token_linear(adaln):
  model, layout = make_model(adaln=adaln)
  randomize_params(model)
  _, timesteps_bmn = make_inputs(layout, seed=3)
  cond_rows_brd = np.asarray(model.conditioning(timesteps_bmn), np.float64)

  # Reference: broadcast cond to every token first, then apply the Linear per token.
  token_rows = reference_token_rows(layout)
  cond_tokens_bld = np.stack([cond_rows_brd[:, row] for row in token_rows], axis=1)
  silu_tokens_bld = cond_tokens_bld / (1.0 + np.exp(-cond_tokens_bld))
  as_np = lambda param: np.asarray(param[...], np.float64)

  gathered = [np.asarray(layers.gather_rows(rows_brk, model.token_row))
              for rows_brk in model.modulation_rows(jnp.asarray(cond_rows_brd, jnp.float32))]
  assert len(gathered) == len(model.blocks)
  for block, gathered_blk in zip(model.blocks, gathered):
    if adaln == "full":
      reference_blk = silu_tokens_bld @ as_np(block.adaln.kernel) + as_np(block.adaln.bias)
    else:
      reference_blk = (silu_tokens_bld @ as_np(model.adaln_base.kernel)
                       + as_np(model.adaln_base.bias)
                       + (silu_tokens_bld @ as_np(block.adaln_down.kernel))
                       @ as_np(block.adaln_up.kernel))
    assert gathered_blk.shape == (2, layout.num_tokens, 6 * model.width)
    np.testing.assert_allclose(gathered_blk, reference_blk, rtol=1e-4, atol=1e-4)


def test_chunked_attention_matches_xla_forward_and_gradients():
  """The attention cores alone; test_bfloat16_and_remat_close_to_float32 compares whole models."""
  length = 105  # not a multiple of the chunk: queries are padded
  q, k, v, cotangent = jax.random.normal(jax.random.key(0), (4, 2, length, 4, 8))
  xla_fn = lambda q, k, v: jnp.sum(layers.xla_attention(q, k, v) * cotangent)
  chunked_fn = lambda q, k, v: jnp.sum(layers.chunked_attention(q, k, v, 16) * cotangent)
  np.testing.assert_allclose(layers.chunked_attention(q, k, v, 16),
                             layers.xla_attention(q, k, v), rtol=1e-5, atol=1e-5)
  xla_grads = jax.jit(jax.grad(xla_fn, argnums=(0, 1, 2)))(q, k, v)
  chunked_grads = jax.jit(jax.grad(chunked_fn, argnums=(0, 1, 2)))(q, k, v)
  for xla_grad, chunked_grad in zip(xla_grads, chunked_grads):
    np.testing.assert_allclose(chunked_grad, xla_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch,heads,heads_per_step", [
    (2, 4, None),  # default: all 8 (batch, head) pairs in one step, no loop
    (2, 4, 2),  # a loop of 4 steps
    (3, 2, 1),  # one pair per step
])
def test_flash_attention_matches_xla_forward_and_gradients(batch, heads, heads_per_step):
  """The flash core alone against jax.nn.dot_product_attention: outputs and all three gradients."""
  length = 105
  q, k, v, cotangent = jax.random.normal(jax.random.key(1), (4, batch, length, heads, 8))
  flash = lambda q, k, v: layers.flash_attention(q, k, v, heads_per_step)
  np.testing.assert_allclose(jax.jit(flash)(q, k, v), layers.xla_attention(q, k, v),
                             rtol=1e-5, atol=1e-5)
  grads = lambda fn: jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent),
                                      argnums=(0, 1, 2)))(q, k, v)
  for flash_grad, xla_grad in zip(grads(flash), grads(layers.xla_attention)):
    np.testing.assert_allclose(flash_grad, xla_grad, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="heads_per_step"):
    layers.flash_attention(q, k, v, heads_per_step=5)


def test_flash_attention_bfloat16_close_to_float32():
  """bfloat16 inputs (float32 logits and softmax): outputs and gradients near the float32 ones."""
  q, k, v, cotangent = jax.random.normal(jax.random.key(2), (4, 2, 105, 4, 8))
  grads = lambda fn, dtype: jax.jit(jax.grad(
      lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * cotangent), argnums=(0, 1, 2)))(
          q.astype(dtype), k.astype(dtype), v.astype(dtype))
  flash = lambda q, k, v: layers.flash_attention(q, k, v, 2)
  out = jax.jit(flash)(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), layers.xla_attention(q, k, v), atol=0.05)
  for low, reference in zip(grads(flash, jnp.bfloat16), grads(layers.xla_attention, jnp.float32)):
    assert low.dtype == jnp.bfloat16
    scale = float(np.abs(np.asarray(reference)).max())
    np.testing.assert_allclose(low.astype(jnp.float32), reference, atol=0.05 * scale)


@pytest.mark.parametrize("equation,x_shape,kernel_shape", [
    ("...i,io->...o", (2, 5, 8), (8, 3)), ("bld,dhk->blhk", (2, 5, 8), (8, 2, 4)),
    ("blhk,hkd->bld", (2, 5, 2, 4), (2, 4, 8))])
def test_bfloat16_matmul_close_to_float32_with_input_dtype_gradients(equation, x_shape,
                                                                    kernel_shape):
  x = jax.random.normal(jax.random.key(0), x_shape)
  kernel = jax.random.normal(jax.random.key(1), kernel_shape)
  reference = jnp.einsum(equation, x, kernel)
  cotangent = jax.random.normal(jax.random.key(2), reference.shape)
  low = layers.matmul_in_dtype(equation, x, kernel, jnp.bfloat16)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(jnp.float32), reference, rtol=0.02, atol=0.05)
  loss = lambda fn: lambda x, kernel: jnp.sum(fn(x, kernel).astype(jnp.float32) * cotangent)
  low_grads = jax.grad(loss(lambda x, kernel: layers.matmul_in_dtype(
      equation, x, kernel, jnp.bfloat16)), argnums=(0, 1))(x, kernel)
  reference_grads = jax.grad(loss(lambda x, kernel: jnp.einsum(equation, x, kernel)),
                             argnums=(0, 1))(x, kernel)
  for low_grad, reference_grad in zip(low_grads, reference_grads):
    assert low_grad.dtype == jnp.float32  # gradients in the dtype of the (float32) inputs
    np.testing.assert_allclose(low_grad, reference_grad, rtol=0.02, atol=0.1)
  # float32: exactly the plain einsum.
  np.testing.assert_array_equal(layers.matmul_in_dtype(equation, x, kernel, jnp.float32),
                                reference)


@pytest.mark.parametrize("token_row", [
    np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4, 4, 5]),  # runs, equal runs merged
    np.array([0, 0, 2, 1, 1, 0, 3, 3, 3]),  # not sorted: rows revisited
])
def test_gather_rows_equals_take_with_gradients(token_row):
  rows_brk = jax.random.normal(jax.random.key(0), (2, 6, 3))
  cotangent = jax.random.normal(jax.random.key(1), (2, len(token_row), 3))
  take = lambda rows: jnp.take(rows, jnp.asarray(token_row), axis=1)
  np.testing.assert_array_equal(layers.gather_rows(rows_brk, token_row), take(rows_brk))
  grad = lambda fn: jax.grad(lambda rows: jnp.sum(fn(rows) * cotangent))(rows_brk)
  np.testing.assert_allclose(grad(lambda rows: layers.gather_rows(rows, token_row)), grad(take),
                             rtol=1e-6, atol=1e-6)
  # Under a transformation that traces the indices, the gather falls back to jnp.take.
  traced = jax.jit(layers.gather_rows)(rows_brk, jnp.asarray(token_row))
  np.testing.assert_array_equal(traced, take(rows_brk))


@pytest.mark.parametrize("remat", ["none", "dots_saveable"])
def test_flash_attention_model_matches_xla_model_with_gradients(remat):
  """Whole model (depth 1) with attention="flash" against attention="xla": outputs, gradients."""
  base, layout = make_model(depth=1)
  randomize_params(base)
  params = nnx.state(base, nnx.Param)
  noisy, timesteps_bmn = make_inputs(layout)
  flash, _ = make_model(depth=1, attention="flash", remat=remat)
  nnx.update(flash, params)

  @nnx.jit
  def forward_and_grads(model):
    def loss_fn(model):
      prediction = model(noisy, timesteps_bmn)
      return sum(jnp.sum(jnp.square(y)) for y in prediction.values()), prediction
    (_, prediction), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return prediction, grads

  reference_out, reference_grads = forward_and_grads(base)
  out, grads = forward_and_grads(flash)
  for name in ("video", "audio"):
    np.testing.assert_allclose(out[name], reference_out[name], rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda g, g_ref: np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-4),
               grads, reference_grads)


@pytest.mark.parametrize("modality,segment", [(0, 1), (1, 2)])
def test_one_row_timestep_changes_only_its_tokens_modulation(modality, segment):
  model, layout = make_model(adaln="lora")
  randomize_params(model)
  noisy, timesteps_bmn = make_inputs(layout)
  changed_bmn = timesteps_bmn.at[:, modality, segment].add(137)
  changed_row = modality * layout.num_segments + segment
  in_row = reference_token_rows(layout) == changed_row
  assert in_row.any() and not in_row.all()

  def gathered_modulation(timesteps):
    rows = model.modulation_rows(model.conditioning(timesteps))
    return [np.asarray(layers.gather_rows(r, model.token_row)) for r in rows]

  for before, after in zip(gathered_modulation(timesteps_bmn), gathered_modulation(changed_bmn)):
    changed_token = np.any(before != after, axis=(0, 2))  # [L]
    np.testing.assert_array_equal(changed_token, in_row)

  # Through full attention, every token's output depends on that row's timestep.
  out_before = predict(model, noisy, timesteps_bmn)
  out_after = predict(model, noisy, changed_bmn)
  for name in ("video", "audio"):
    delta = np.abs(np.asarray(out_after[name] - out_before[name])).max(axis=-1)
    assert np.all(delta > 1e-6), name


def test_bfloat16_and_remat_close_to_float32():
  base, layout = make_model(depth=1)
  randomize_params(base)
  params = nnx.state(base, nnx.Param)
  noisy, timesteps_bmn = make_inputs(layout)
  self_cond = jax.tree.map(lambda x: 0.3 * x, noisy)

  @nnx.jit
  def forward_and_grads(model):
    """(prediction, d loss / d params) with loss = sum of squared predictions."""
    def loss_fn(model):
      prediction = model(noisy, timesteps_bmn, self_cond)
      return sum(jnp.sum(jnp.square(y)) for y in prediction.values()), prediction
    (_, prediction), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return prediction, grads

  reference_out, reference_grads = forward_and_grads(base)
  scale = {name: float(np.abs(np.asarray(y)).max()) for name, y in reference_out.items()}

  # Gradients only where remat acts on them (a bf16 backward pass is slow to compile on CPU);
  # the dots_saveable variant also checks chunked against xla attention in the whole model.
  for overrides, tolerance, with_grads in (
      ({"dtype": "bfloat16"}, 0.05, False), ({"remat": "full"}, 1e-5, False),
      ({"remat": "dots_saveable", "attention": "chunked"}, 1e-4, True)):
    variant, _ = make_model(depth=1, **overrides)
    nnx.update(variant, params)
    if with_grads:
      out, grads = forward_and_grads(variant)
      jax.tree.map(lambda g, g_ref: np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-4),
                   grads, reference_grads)
    else:
      out = predict(variant, noisy, timesteps_bmn, self_cond)
    for name in ("video", "audio"):
      assert out[name].dtype == jnp.float32
      assert np.all(np.isfinite(out[name]))
      np.testing.assert_allclose(out[name], reference_out[name], rtol=0,
                                 atol=tolerance * scale[name], err_msg=str(overrides))
  for param in jax.tree.leaves(params):
    assert param.dtype == jnp.float32


@pytest.mark.parametrize("adaln", ["full", "lora"])
def test_every_param_has_logical_axes_of_its_rank(adaln):
  # Every optional module on, so each of their kernels is checked too.
  model, _ = make_model(adaln=adaln, qk_norm=True, cross_modal_pool=True, noise_key_bias=True,
                        split_attention=True, clip_pool=True)
  default_rules = dict(avdit_synthetic.get_config("tiny").mesh.logical_axis_rules)
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  assert len(flat) > 0
  for path, variable in flat:
    # flax 0.12 stores with_partitioning names as the `out_sharding` metadata.
    names = variable.get_metadata().get("out_sharding")
    assert names is not None, path
    assert len(names) == variable.ndim, (path, names, variable.shape)
    assert set(names) <= LOGICAL_AXIS_VOCABULARY, (path, names)
    # A NamedSharding may use each mesh axis once: two names on one mesh axis cannot shard.
    mesh_axes = [axis for name in names for axis in jax.tree.leaves(default_rules[name])]
    assert len(mesh_axes) == len(set(mesh_axes)), (path, names, mesh_axes)
    assert variable.dtype == jnp.float32, path
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  assert tuple(specs["blocks"][0]["mlp"]["fc_in"]["kernel"].get_value()) == ("embed", "mlp")


@pytest.mark.parametrize("adaln,patch_size", [("lora", 1), ("full", 2)])
def test_flops_per_example_matches_kernel_counts(adaln, patch_size):
  model, layout = make_model(adaln=adaln, patch_size=patch_size)
  config = make_config(adaln=adaln, patch_size=patch_size)
  flops = flops_per_example(config, layout)
  kernel_sizes = {"attn": 0, "mlp": 0}
  for path, variable in nnx.to_flat_state(nnx.state(model.blocks, nnx.Param)):
    if path[-1].endswith("kernel"):
      kernel_sizes[path[1]] = kernel_sizes.get(path[1], 0) + variable.size
  # Token-wise matmuls: 2 FLOPs per kernel entry per token.
  assert flops["attention_projections"] == 2 * kernel_sizes["attn"] * layout.num_tokens
  assert flops["mlp"] == 2 * kernel_sizes["mlp"] * layout.num_tokens
  assert flops["input_projections"] == 2 * (model.video_in.kernel.size * layout.num_video_tokens
                                            + model.audio_in.kernel.size * layout.audio_latents)
  assert flops["attention_core"] == config.depth * 4 * layout.num_tokens**2 * config.width
  assert flops["total"] == sum(v for k, v in flops.items() if k != "total")
  assert count_params(model) == sum(v.size for _, v in nnx.to_flat_state(nnx.state(model)))


@pytest.mark.parametrize("adaln,remat", [
    ("lora", "none"), pytest.param("full", "dots_saveable", marks=pytest.mark.slow)])
def test_scanned_layers_equal_the_unrolled_loop(adaln, remat):
  """model.scan_layers: the same blocks stacked on a leading "layers" axis give the same outputs
  and gradients as the Python loop (independent code path: the loop's per-block parameters are
  stacked with numpy into the scanned model)."""
  depth = 2  # two blocks already tell the stacking order apart; each more is compile time
  loop, layout = make_model(depth=depth, adaln=adaln, remat=remat)
  randomize_params(loop)
  scanned, _ = make_model(depth=depth, adaln=adaln, remat=remat, scan_layers=True)
  loop_params = nnx.state(loop, nnx.Param)
  scanned_params = nnx.state(scanned, nnx.Param)
  flat_loop = dict(nnx.to_flat_state(loop_params))
  stacked = {}
  for path, variable in nnx.to_flat_state(scanned_params):
    if path[0] == "blocks":
      per_block = [flat_loop[("blocks", i, *path[1:])].get_value() for i in range(depth)]
      assert variable.shape == (depth, *per_block[0].shape), path
      # Logical names gain the "layers" axis in front.
      names = variable.get_metadata().get("out_sharding")
      assert names[0] == "layers" and len(names) == variable.ndim, (path, names)
      stacked[path] = jnp.asarray(np.stack(per_block))
    else:
      stacked[path] = flat_loop[path].get_value()
  assert len(stacked) == len(flat_loop) - (depth - 1) * sum(
      1 for p in stacked if p[0] == "blocks")
  nnx.update(scanned, nnx.from_flat_state({p: v for p, v in stacked.items()}))
  noisy, timesteps_bmn = make_inputs(layout)

  @nnx.jit
  def forward_and_grads(model):
    def loss_fn(model):
      prediction = model(noisy, timesteps_bmn)
      return sum(jnp.sum(jnp.square(y)) for y in prediction.values()), prediction
    (_, prediction), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return prediction, nnx.to_flat_state(grads)

  out_loop, grads_loop = forward_and_grads(loop)
  out_scan, grads_scan = forward_and_grads(scanned)
  for name in ("video", "audio"):
    assert float(jnp.abs(out_loop[name]).max()) > 1e-3
    np.testing.assert_allclose(out_scan[name], out_loop[name], rtol=1e-5, atol=1e-5)
  grads_loop = dict(grads_loop)
  for path, g in grads_scan:
    g = np.asarray(g.get_value())
    if path[0] == "blocks":
      reference = np.stack([grads_loop[("blocks", i, *path[1:])].get_value()
                            for i in range(depth)])
    else:
      reference = grads_loop[path].get_value()
    # Summation order differs (scan vs unrolled), and gradients of O(1e3) cancel to O(1): the
    # tolerance is float32 round-off relative to the array's largest entry.
    np.testing.assert_allclose(g, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max(),
                               err_msg=str(path))


def test_splash_attention_matches_xla_forward_and_gradients():
  """The Pallas TPU splash kernel, run by the Pallas interpreter on CPU: L = 150 is padded to its
  128-tile (256) with the padded keys masked, so a wrong mask or scale shows up here."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 2, 150, 32)), jnp.float32) for _ in range(3))
  reference = lambda q, k, v: jnp.swapaxes(layers.xla_attention(
      *(jnp.swapaxes(x, 1, 2) for x in (q, k, v))), 1, 2)
  splash = lambda q, k, v: layers.splash_attention_bhld(q, k, v, interpret=True)
  np.testing.assert_allclose(splash(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-5)
  grads = lambda fn: jax.grad(lambda *x: jnp.sum(jnp.sin(fn(*x))), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads(splash), grads(reference)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # the kernel test above and the v5e AOT compile cover the default run
def test_splash_attention_model_matches_xla_model():
  base, layout = make_model(depth=1)
  randomize_params(base)
  splash, _ = make_model(depth=1, attention="splash")
  nnx.update(splash, nnx.state(base, nnx.Param))
  noisy, timesteps_bmn = make_inputs(layout)
  want, got = predict(base, noisy, timesteps_bmn), predict(splash, noisy, timesteps_bmn)
  for name in ("video", "audio"):
    assert float(jnp.abs(want[name]).max()) > 1e-3
    np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_time_rotary_matches_complex_rotation_and_scores_depend_on_time_difference():
  """RoPE against a numpy complex-number reference; q·k depends on t_q - t_k only."""
  rng = np.random.default_rng(0)
  seconds = np.array([0.0, 0.37, 1.1, 2.0])
  cos, sin = layers.time_rotary_tables(seconds, head_dim=8, fraction=0.5,
                                       wavelengths_s=(0.05, 4.0))
  assert cos.shape == (4, 2)
  x_bhld = rng.standard_normal((1, 1, 4, 8)).astype(np.float32)
  rotated = np.asarray(layers.apply_rotary(jnp.asarray(x_bhld), cos, sin, length_axis=2))
  wavelengths = np.array([0.05, 4.0])
  as_complex = x_bhld[..., 0:2] + 1j * x_bhld[..., 2:4]
  expected = as_complex * np.exp(2j * np.pi * seconds[:, None] / wavelengths)
  np.testing.assert_allclose(rotated[..., 0:2], expected.real, atol=1e-5)
  np.testing.assert_allclose(rotated[..., 2:4], expected.imag, atol=1e-5)
  np.testing.assert_array_equal(rotated[..., 4:], x_bhld[..., 4:])  # unrotated channels
  # The same q and k at times shifted together score the same.
  q, k = rng.standard_normal((2, 8)).astype(np.float32)
  def score(t_q, t_k):
    c, s = layers.time_rotary_tables(np.array([t_q, t_k]), 8, 1.0, (0.05, 4.0))
    both = layers.apply_rotary(jnp.asarray(np.stack([q, k])[:, None, :]), c, s, length_axis=0)
    return float(both[0, 0] @ both[1, 0])
  assert score(0.3, 0.1) == pytest.approx(score(1.3, 1.1), rel=1e-4)
  assert abs(score(0.3, 0.1) - score(0.3, 0.25)) > 1e-3


def test_time_rope_model_flash_matches_xla_and_differs_from_no_rope():
  base, layout = make_model(depth=1, time_rope=True)
  randomize_params(base)
  params = nnx.state(base, nnx.Param)
  noisy, timesteps_bmn = make_inputs(layout)
  flash, _ = make_model(depth=1, time_rope=True, attention="flash")
  plain, _ = make_model(depth=1)
  nnx.update(flash, params)
  nnx.update(plain, params)  # same parameters: RoPE adds none
  reference = predict(base, noisy, timesteps_bmn)
  out = predict(flash, noisy, timesteps_bmn)
  without = predict(plain, noisy, timesteps_bmn)
  for name in ("video", "audio"):
    np.testing.assert_allclose(out[name], reference[name], rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(without[name]) - np.asarray(reference[name])).max() > 1e-3


def test_cross_modal_pool_matches_a_numpy_loop_and_starts_as_the_identity():
  from avdit.models.avdit import CrossModalPool  # pylint: disable=g-import-not-at-top
  layout = make_layout()
  with nnx.use_eager_sharding(False):  # no mesh here: logical names as metadata only
    pool = CrossModalPool(32, layout, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).standard_normal((2, layout.num_tokens, 32)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(pool(jnp.asarray(x))), x)  # zero-init: identity
  randomize_params(pool)
  got = np.asarray(pool(jnp.asarray(x)))

  def norm(v):
    return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6)

  def project(dense, v):
    return v @ np.asarray(dense.kernel[...]) + np.asarray(dense.bias[...])

  expected = x.copy()
  lv = layout.num_video_tokens
  for n in range(layout.num_segments):
    video_rows = range(n * layout.video_tokens_per_segment,
                       (n + 1) * layout.video_tokens_per_segment)
    audio_rows = [lv + j for j in range(layout.audio_latents) if layout.segment_of_audio[j] == n]
    video_mean = norm(x[:, list(video_rows)]).mean(1)
    audio_mean = norm(x[:, audio_rows]).mean(1)
    for i in video_rows:
      expected[:, i] += project(pool.from_audio, audio_mean)
    for i in audio_rows:
      expected[:, i] += project(pool.from_video, video_mean)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

  # model.cross_modal_pool_deviation: plus a projection of each segment mean minus the mean of
  # the segment means (numpy loop again).
  with nnx.use_eager_sharding(False):
    deviating = CrossModalPool(32, layout, dtype=jnp.float32, rngs=nnx.Rngs(1), deviation=True)
  np.testing.assert_array_equal(np.asarray(deviating(jnp.asarray(x))), x)  # zero-init
  randomize_params(deviating)
  segments = range(layout.num_segments)
  video_rows = [list(range(n * layout.video_tokens_per_segment,
                           (n + 1) * layout.video_tokens_per_segment)) for n in segments]
  audio_rows = [[lv + j for j in range(layout.audio_latents) if layout.segment_of_audio[j] == n]
                for n in segments]
  video_means = [norm(x[:, rows]).mean(1) for rows in video_rows]
  audio_means = [norm(x[:, rows]).mean(1) for rows in audio_rows]
  expected = x.copy()
  for n in segments:
    for i in video_rows[n]:
      expected[:, i] += (project(deviating.from_audio, audio_means[n]) + project(
          deviating.deviation_from_audio, audio_means[n] - np.mean(audio_means, 0)))
    for i in audio_rows[n]:
      expected[:, i] += (project(deviating.from_video, video_means[n]) + project(
          deviating.deviation_from_video, video_means[n] - np.mean(video_means, 0)))
  np.testing.assert_allclose(np.asarray(deviating(jnp.asarray(x))), expected, rtol=1e-4,
                             atol=1e-4)


def test_clip_pool_adds_each_modality_its_own_clip_mean_and_starts_as_the_identity():
  from avdit.models.avdit import ClipPool  # pylint: disable=g-import-not-at-top
  layout = make_layout()
  with nnx.use_eager_sharding(False):
    pool = ClipPool(32, layout, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = np.random.default_rng(1).standard_normal((2, layout.num_tokens, 32)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(pool(jnp.asarray(x))), x)  # zero-init: identity
  randomize_params(pool)
  got = np.asarray(pool(jnp.asarray(x)))
  normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  expected = x.copy()
  lv = layout.num_video_tokens
  for rows, dense in ((slice(0, lv), pool.video), (slice(lv, None), pool.audio)):
    clip_mean_bd = normed[:, rows].mean(1)
    expected[:, rows] += (clip_mean_bd @ np.asarray(dense.kernel[...])
                          + np.asarray(dense.bias[...]))[:, None, :]
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  # What one clip's tokens receive does not depend on another clip's.
  other = x.copy()
  other[1] += 5.0 * np.random.default_rng(2).standard_normal(other[1].shape).astype(np.float32)
  np.testing.assert_allclose(np.asarray(pool(jnp.asarray(other)))[0], got[0], rtol=1e-5,
                             atol=1e-5)
  # model.clip_pool_modalities="video": the audio tokens pass unchanged.
  with nnx.use_eager_sharding(False):
    video_only = ClipPool(32, layout, dtype=jnp.float32, rngs=nnx.Rngs(0), modalities=("video",))
  video_only.video = pool.video
  got = np.asarray(video_only(jnp.asarray(x)))
  np.testing.assert_array_equal(got[:, lv:], x[:, lv:])
  np.testing.assert_allclose(got[:, :lv], expected[:, :lv], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("option", ["cross_modal_pool", "clip_pool"])
def test_model_with_a_pool_is_unchanged_at_init_and_rejects_scan(option):
  plain, layout = make_model(attention="xla")
  pooled, _ = make_model(attention="xla", **{option: True})
  randomize_params(plain)
  nnx.update(pooled, nnx.state(plain, nnx.Param))  # same blocks; the pools stay at zero
  noisy, timesteps = make_inputs(layout)
  for name, value in predict(plain, noisy, timesteps).items():
    np.testing.assert_allclose(np.asarray(predict(pooled, noisy, timesteps)[name]),
                               np.asarray(value), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="scan_layers"):
    make_model(scan_layers=True, **{option: True})


def reference_key_biased_attention(q_blhd, k_blhd, v_blhd, key_bias_bhl):
  """softmax(q kᵀ / √Dh + bias[key]) v written out in jnp: the second code path."""
  logits_bhqk = jnp.einsum("bqhd,bkhd->bhqk", q_blhd, k_blhd) / np.sqrt(q_blhd.shape[-1])
  probs_bhqk = jax.nn.softmax(logits_bhqk + key_bias_bhl[:, :, None, :], axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", probs_bhqk, v_blhd)


# xla's key bias (jax.nn.dot_product_attention) is checked against flash's in the model test below.
@pytest.mark.parametrize("kind", ["chunked", "flash"])
def test_key_biased_attention_matches_a_reference_forward_and_gradients(kind):
  """Every kernel with a key bias: outputs and the gradients of q, k, v and the bias itself."""
  batch, length, heads = 2, 37, 4
  q, k, v, cotangent = jax.random.normal(jax.random.key(2), (4, batch, length, heads, 8))
  key_bias = 3.0 * jax.random.normal(jax.random.key(3), (batch, heads, length))
  kernel = {
      "xla": layers.xla_attention,
      "chunked": lambda q, k, v, b: layers.chunked_attention(q, k, v, 16, b),
      "flash": lambda q, k, v, b: jnp.swapaxes(layers.flash_attention_bhld(
          *(jnp.swapaxes(x, 1, 2) for x in (q, k, v)), heads_per_step=2, key_bias_bhl=b), 1, 2),
  }[kind]
  np.testing.assert_allclose(jax.jit(kernel)(q, k, v, key_bias),
                             reference_key_biased_attention(q, k, v, key_bias),
                             rtol=1e-5, atol=1e-5)
  grads = lambda fn: jax.jit(jax.grad(lambda *args: jnp.sum(fn(*args) * cotangent),
                                      argnums=(0, 1, 2, 3)))(q, k, v, key_bias)
  for got, expected in zip(grads(kernel), grads(reference_key_biased_attention)):
    assert np.abs(np.asarray(expected)).max() > 1e-3  # every gradient is exercised
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_noise_key_bias_model_starts_as_the_plain_model_and_learns_a_bias_per_key_row():
  plain, layout = make_model(depth=1)
  randomize_params(plain)
  biased, _ = make_model(depth=1, noise_key_bias=True, attention="flash")
  nnx.update(biased, nnx.state(plain, nnx.Param))  # same blocks; the key bias stays at zero
  noisy, timesteps = make_inputs(layout)
  for name, value in predict(plain, noisy, timesteps).items():
    np.testing.assert_allclose(np.asarray(predict(biased, noisy, timesteps)[name]),
                               np.asarray(value), rtol=1e-4, atol=1e-5)

  # The bias is a function of each key's conditioning row: a second path computes it by hand.
  randomize_params(biased, seed=4)
  block = biased.blocks[0]
  silu_cond_brd = jax.nn.silu(biased.conditioning(timesteps))
  by_hand_brh = (np.asarray(silu_cond_brd) @ np.asarray(block.key_bias.kernel[...])
                 + np.asarray(block.key_bias.bias[...]))
  np.testing.assert_allclose(np.asarray(block.key_bias_rows(silu_cond_brd)), by_hand_brh,
                             rtol=1e-5, atol=1e-5)
  xla, _ = make_model(depth=1, noise_key_bias=True, attention="xla")
  nnx.update(xla, nnx.state(biased, nnx.Param))
  for name, value in predict(xla, noisy, timesteps).items():
    np.testing.assert_allclose(np.asarray(predict(biased, noisy, timesteps)[name]),
                               np.asarray(value), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="splash"):
    make_model(noise_key_bias=True, attention="splash")


def reference_split_attention(q_blhd, k_blhd, v_blhd, key_bias_bhl, gate_blh, split):
  """Per query: softmax over its own modality's keys + gate · softmax over the other's, by mask."""
  logits_bhqk = (jnp.einsum("bqhd,bkhd->bhqk", q_blhd, k_blhd) / np.sqrt(q_blhd.shape[-1])
                 + key_bias_bhl[:, :, None, :])
  is_first_l = np.arange(q_blhd.shape[1]) < split
  same_qk = is_first_l[:, None] == is_first_l[None, :]
  attend = lambda mask: jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(
      jnp.where(mask, logits_bhqk, -jnp.inf), axis=-1), v_blhd)
  return attend(same_qk) + gate_blh[..., None] * attend(~same_qk)


@pytest.mark.parametrize("kind", ["chunked", "flash"])
def test_split_attention_matches_a_masked_reference_forward_and_gradients(kind):
  batch, length, heads, split = 2, 29, 2, 12
  q, k, v, cotangent = jax.random.normal(jax.random.key(5), (4, batch, length, heads, 8))
  key_bias = jax.random.normal(jax.random.key(6), (batch, heads, length))
  gate = jax.random.normal(jax.random.key(7), (batch, length, heads))
  with nnx.use_eager_sharding(False):
    attention = layers.SelfAttention(8 * heads, heads, qk_norm=False, attention=kind,
                                     attention_chunk=8, dtype=jnp.float32, rngs=nnx.Rngs(0))
  split_fn = lambda q, k, v, b, g: attention._split_attention(q, k, v, b, split, g)
  reference_fn = lambda q, k, v, b, g: reference_split_attention(q, k, v, b, g, split)
  args = (q, k, v, key_bias, gate)
  np.testing.assert_allclose(jax.jit(split_fn)(*args), reference_fn(*args), rtol=1e-5, atol=1e-5)
  grads = lambda fn: jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent),
                                      argnums=(0, 1, 2, 3, 4)))(*args)
  for got, expected in zip(grads(split_fn), grads(reference_fn)):
    assert np.abs(np.asarray(expected)).max() > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_split_attention_model_reads_the_other_modality_only_through_its_gate():
  model, layout = make_model(depth=1, split_attention=True, attention="flash",
                             self_condition=False)
  randomize_params(model)
  noisy, timesteps = make_inputs(layout)
  other_audio = dict(noisy, audio=noisy["audio"] + 1.0)
  block = model.blocks[0]
  # Gate rows by hand: row m·N + n takes [its own row, the other modality's row n].
  silu_cond_brd = np.asarray(jax.nn.silu(model.conditioning(timesteps)))
  n = layout.num_segments
  paired = np.concatenate([silu_cond_brd, np.concatenate([silu_cond_brd[:, n:],
                                                          silu_cond_brd[:, :n]], 1)], -1)
  np.testing.assert_allclose(
      np.asarray(block.cross_gate_rows(jnp.asarray(silu_cond_brd))),
      paired @ np.asarray(block.cross_gate.kernel[...]) + np.asarray(block.cross_gate.bias[...]),
      rtol=1e-5, atol=1e-5)
  changed = np.abs(np.asarray(predict(model, other_audio, timesteps)["video"])
                   - np.asarray(predict(model, noisy, timesteps)["video"])).max()
  assert changed > 1e-3  # the (randomized) gate lets the audio in
  block.cross_gate.kernel[...] = jnp.zeros_like(block.cross_gate.kernel[...])
  block.cross_gate.bias[...] = jnp.zeros_like(block.cross_gate.bias[...])
  np.testing.assert_array_equal(np.asarray(predict(model, other_audio, timesteps)["video"]),
                                np.asarray(predict(model, noisy, timesteps)["video"]))
  with pytest.raises(ValueError, match="splash"):
    make_model(split_attention=True, attention="splash")
