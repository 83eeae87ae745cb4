"""AVDiT: one diffusion transformer over [video tokens || audio tokens] (SPEC §5).

Each (modality, time-segment) row of the clip has its own timestep (MoNL). The timestep vector
[B, M, N] becomes one conditioning vector per row [B, M·N, d]; every AdaLN modulation is computed
on those rows and gathered to tokens with `layout.token_row`, never by a Linear per token
(≈ 2·5 rows against 1387 tokens at the paper's shape).

Shapes: B batch, N segments, (h, w) latent frame, p patch, d width, L = layout.num_tokens,
R = M·N rows, L_v = N·(h/p)·(w/p) video tokens, l_a audio latents.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from avdit.layout import NUM_MODALITIES, VIDEO, AUDIO, ClipLayout
from avdit.models import layers
from avdit.models.layers import AXES

LAYERS_AXIS = "layers"  # logical name of the stacked-blocks axis when model.scan_layers
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_REMAT_POLICIES = {
    "full": None,  # save nothing inside a block: recompute it all in the backward pass
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def patchify(video_bnhwc: jax.Array, patch: int) -> jax.Array:
  """[B, N, h, w, C] -> [B, N·(h/p)·(w/p), p·p·C], tokens in (t, h, w) order."""
  b, n, h, w, c = video_bnhwc.shape
  x = video_bnhwc.reshape(b, n, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(b, n * (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens_blk: jax.Array, patch: int, video_shape: tuple[int, ...]) -> jax.Array:
  """Inverse of `patchify`: [B, L_v, p·p·C] -> [B, N, h, w, C] with video_shape = (N, h, w, C)."""
  n, h, w, c = video_shape
  b = tokens_blk.shape[0]
  x = tokens_blk.reshape(b, n, h // patch, w // patch, patch, patch, c)
  x = x.transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(b, n, h, w, c)


class FinalLayer(nnx.Module):
  """LayerNorm modulated per row (own zero-init Linear d -> 2d), then per-modality outputs."""

  def __init__(self, width: int, video_out: int, audio_out: int, *, dtype: jnp.dtype,
               rngs: nnx.Rngs):
    zero = dict(kernel_init=layers.zeros, dtype=dtype, rngs=rngs)
    self.adaln = layers.Dense(width, 2 * width, kernel_axes=AXES.modulation_kernel,
                              bias_axes=AXES.modulation_bias, **zero)
    self.video_out = layers.Dense(width, video_out, kernel_axes=AXES.video_out_kernel,
                                  bias_axes=AXES.video_out_bias, **zero)
    self.audio_out = layers.Dense(width, audio_out, kernel_axes=AXES.audio_out_kernel,
                                  bias_axes=AXES.audio_out_bias, **zero)

  def __call__(self, x_bld: jax.Array, silu_cond_brd: jax.Array, token_row_l: jax.Array,
               num_video_tokens: int) -> tuple[jax.Array, jax.Array]:
    """-> (video tokens [B, L_v, p·p·d_v], audio tokens [B, l_a, d_a]) in the compute dtype."""
    shift_brd, scale_brd = jnp.split(self.adaln(silu_cond_brd), 2, axis=-1)
    h_bld = layers.modulate(layers.layer_norm(x_bld), layers.gather_rows(shift_brd, token_row_l),
                            layers.gather_rows(scale_brd, token_row_l))
    return (self.video_out(h_bld[:, :num_video_tokens]),
            self.audio_out(h_bld[:, num_video_tokens:]))


def _pool_projection(width: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> layers.Dense:
  """A zero-initialized d x d projection of a pooled token (the pools start as the identity)."""
  return layers.Dense(width, width, kernel_axes=AXES.cross_modal_kernel,
                      bias_axes=AXES.embed_bias, kernel_init=layers.zeros, dtype=dtype, rngs=rngs)


class CrossModalPool(nnx.Module):
  """Adds to every token a projection of the other modality's mean token over its segment.

  A direct, time-aligned path between the modalities (model.cross_modal_pool, after each block):
  joint attention can learn the same, but in a small budget it did not (the cross-modal gain
  stayed ~0). Zero-initialized, so the model starts as without it.
  """

  def __init__(self, width: int, layout: ClipLayout, *, dtype: jnp.dtype, rngs: nnx.Rngs,
               deviation: bool = False):
    self.layout = layout
    self.from_video = _pool_projection(width, dtype, rngs)
    self.from_audio = _pool_projection(width, dtype, rngs)
    # model.cross_modal_pool_deviation: a second projection of the segment means minus their
    # clip mean, the part that changes over time (where the disc is), which what every segment
    # shares (a clip's background, once model.clip_pool has spread it) can otherwise swamp.
    self.deviation_from_video = _pool_projection(width, dtype, rngs) if deviation else None
    self.deviation_from_audio = _pool_projection(width, dtype, rngs) if deviation else None

  def __call__(self, x_bld: jax.Array) -> jax.Array:
    lay = self.layout
    b, _, d = x_bld.shape
    n, per_segment = lay.num_segments, lay.video_tokens_per_segment
    normed = layers.layer_norm(x_bld)
    video_mean_bnd = normed[:, :lay.num_video_tokens].reshape(b, n, per_segment, d).mean(2)
    segment_of_audio = lay.segment_of_audio  # numpy [l_a]: a compile-time gather
    one_hot_ln = jax.nn.one_hot(segment_of_audio, n, dtype=x_bld.dtype)
    one_hot_ln = one_hot_ln / jnp.maximum(one_hot_ln.sum(0, keepdims=True), 1.0)
    audio_mean_bnd = jnp.einsum("ln,bld->bnd", one_hot_ln, normed[:, lay.num_video_tokens:])
    from_audio_bnd = self.from_audio(audio_mean_bnd)
    from_video_bnd = self.from_video(video_mean_bnd)
    if self.deviation_from_video is not None:
      from_audio_bnd += self.deviation_from_audio(
          audio_mean_bnd - audio_mean_bnd.mean(1, keepdims=True))
      from_video_bnd += self.deviation_from_video(
          video_mean_bnd - video_mean_bnd.mean(1, keepdims=True))
    to_video = jnp.repeat(from_audio_bnd, per_segment, axis=1)
    to_audio = from_video_bnd[:, segment_of_audio]
    return x_bld + jnp.concatenate([to_video, to_audio], axis=1)


class ClipPool(nnx.Module):
  """Adds to every token a projection of its own modality's mean token over the whole clip.

  The tokens of a generated clip must agree on what is shared by all of them (a scene's
  background); the mean of the clip's noisy tokens estimates it at noise levels where one token
  cannot (model.clip_pool, after each block). Meant for a2v frames whose 8x8 tokens each kept
  their own colour; measured (README), it did not make them agree. Zero-initialized, so the
  model starts as without it.
  """

  def __init__(self, width: int, layout: ClipLayout, *, dtype: jnp.dtype, rngs: nnx.Rngs,
               modalities: tuple[str, ...] = ("video", "audio")):
    self.layout = layout
    # model.clip_pool_modalities: the modalities whose tokens get their clip mean.
    self.video = _pool_projection(width, dtype, rngs) if "video" in modalities else None
    self.audio = _pool_projection(width, dtype, rngs) if "audio" in modalities else None

  def __call__(self, x_bld: jax.Array) -> jax.Array:
    num_video = self.layout.num_video_tokens
    normed = layers.layer_norm(x_bld)
    parts = []
    for projection, tokens_bld in ((self.video, normed[:, :num_video]),
                                   (self.audio, normed[:, num_video:])):
      if projection is None:
        parts.append(jnp.zeros_like(tokens_bld))
      else:
        parts.append(jnp.broadcast_to(projection(tokens_bld.mean(1, keepdims=True)),
                                      tokens_bld.shape))
    return x_bld + jnp.concatenate(parts, axis=1).astype(x_bld.dtype)


class AVDiT(nnx.Module):
  """Audiovisual DiT with per-(modality, segment) timesteps and AdaLN (full or LoRA)."""

  def __init__(self, model_config, layout: ClipLayout, *, rngs: nnx.Rngs):
    cfg = model_config
    if cfg.patch_size != layout.patch_size:
      raise ValueError(f"model.patch_size={cfg.patch_size} but the layout was built with "
                       f"patch_size={layout.patch_size}; build it with layout_from_config.")
    if cfg.dtype not in _DTYPES:
      raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {cfg.dtype!r}")
    if cfg.remat not in ("none", *_REMAT_POLICIES):
      raise ValueError(f"model.remat must be none, full or dots_saveable, got {cfg.remat!r}")
    self.layout = layout
    self.width = width = cfg.width
    self.patch_size = p = cfg.patch_size
    self.timestep_embed_dim = cfg.timestep_embed_dim
    self.self_condition = bool(cfg.self_condition)
    self.adaln_kind = cfg.adaln
    # Time RoPE (shared by both modalities, in seconds) on top of the learned positions: without
    # it, nothing tells attention which audio latents play under which video segment.
    self.time_rope = bool(cfg.get("time_rope", False))
    self.time_rope_fraction = float(cfg.get("time_rope_fraction", 0.5))
    self.time_rope_wavelengths = tuple(float(w) for w in cfg.get("time_rope_wavelengths",
                                                                 (0.04, 8.0)))
    self.head_dim = width // cfg.num_heads
    self.remat = cfg.remat
    self.scan_layers = bool(cfg.get("scan_layers", False))
    self.dtype = dtype = _DTYPES[cfg.dtype]
    # Self-conditioning doubles the input channels: [noisy || previous x̂0].
    inputs_per_channel = 2 if self.self_condition else 1
    d_v, d_a = layout.video_channels, layout.audio_channels

    with layers.annotate_without_mesh():
      self.video_in = layers.Dense(p * p * d_v * inputs_per_channel, width,
                                   kernel_axes=AXES.video_in_kernel, bias_axes=AXES.embed_bias,
                                   dtype=dtype, rngs=rngs)
      self.audio_in = layers.Dense(d_a * inputs_per_channel, width,
                                   kernel_axes=AXES.audio_in_kernel, bias_axes=AXES.embed_bias,
                                   dtype=dtype, rngs=rngs)
      embedding = lambda shape, axes: layers.make_param(rngs, layers.embedding_normal, shape, axes)
      self.video_spatial_pos = embedding((layout.video_tokens_per_segment, width),
                                         AXES.video_spatial_pos)
      self.video_temporal_pos = embedding((layout.num_segments, width), AXES.video_temporal_pos)
      self.audio_temporal_pos = embedding((layout.audio_latents, width), AXES.audio_temporal_pos)
      self.modality_embed = embedding((NUM_MODALITIES, width), AXES.modality_embed)
      self.row_embed = embedding((layout.num_rows, width), AXES.row_embed)
      self.timestep_in = layers.Dense(cfg.timestep_embed_dim, width,
                                      kernel_axes=AXES.timestep_in_kernel,
                                      bias_axes=AXES.mlp_bias, dtype=dtype, rngs=rngs)
      self.timestep_out = layers.Dense(width, width, kernel_axes=AXES.timestep_out_kernel,
                                       bias_axes=AXES.embed_bias, dtype=dtype, rngs=rngs)
      if cfg.adaln == "lora":
        # Shared by all blocks; zero-init so each block is the identity at init (adaLN-Zero).
        self.adaln_base = layers.Dense(width, 6 * width, kernel_axes=AXES.modulation_kernel,
                                       bias_axes=AXES.modulation_bias, kernel_init=layers.zeros,
                                       dtype=dtype, rngs=rngs)
      make_block = lambda rngs: layers.AdaLNBlock(
          width, cfg.num_heads, cfg.mlp_ratio, adaln=cfg.adaln,
          adaln_lora_rank=cfg.adaln_lora_rank, qk_norm=cfg.qk_norm, attention=cfg.attention,
          attention_chunk=cfg.attention_chunk, dtype=dtype, rngs=rngs,
          noise_key_bias=bool(cfg.get("noise_key_bias", False)),
          split_attention=bool(cfg.get("split_attention", False)))
      if self.scan_layers:
        # One block whose parameters carry a leading "layers" axis of size depth; the forward
        # pass is one lax.scan over it, so compile time does not grow with depth.
        make_block = nnx.split_rngs(splits=cfg.depth)(nnx.vmap(
            make_block, in_axes=(0,), out_axes=0,
            transform_metadata={nnx.PARTITION_NAME: LAYERS_AXIS}))
        self.blocks = make_block(rngs)
      else:
        self.blocks = nnx.List([make_block(rngs) for _ in range(cfg.depth)])
      self.final = FinalLayer(width, p * p * d_v, d_a, dtype=dtype, rngs=rngs)
      self.cross_modal_pool = bool(cfg.get("cross_modal_pool", False))
      if self.cross_modal_pool:
        self.pools = self._per_block(
            functools.partial(CrossModalPool,
                              deviation=bool(cfg.get("cross_modal_pool_deviation", False))),
            "cross_modal_pool", cfg, layout, rngs)
      self.clip_pool = bool(cfg.get("clip_pool", False))
      if self.clip_pool:
        modalities = tuple(cfg.get("clip_pool_modalities", "video,audio").split(","))
        if not set(modalities) <= {"video", "audio"}:
          raise ValueError("model.clip_pool_modalities names video and/or audio, got "
                           f"{cfg.clip_pool_modalities!r}")
        self.clip_pools = self._per_block(
            functools.partial(ClipPool, modalities=modalities), "clip_pool", cfg, layout, rngs)

  def _per_block(self, pool_class, option: str, cfg, layout: ClipLayout, rngs: nnx.Rngs):
    """One pool per block; pools run between unrolled blocks, so not with scan_layers."""
    if self.scan_layers:
      raise ValueError(f"model.{option} runs between unrolled blocks; set "
                       "model.scan_layers=False")
    return nnx.List([pool_class(self.width, layout, dtype=self.dtype, rngs=rngs)
                     for _ in range(cfg.depth)])

  # --- pieces (public so tests and analysis can check them) ------------------------------------
  @property
  def token_row(self) -> jax.Array:
    """int32 [L]: the conditioning row m·N + n of each token."""
    return jnp.asarray(self.layout.token_row)

  def embed_tokens(self, noisy: dict[str, jax.Array],
                   self_cond: dict[str, jax.Array] | None = None) -> jax.Array:
    """Latents (and the self-conditioning estimate) -> tokens [B, L, d] in the compute dtype."""
    lay = self.layout
    video_bnhwc, audio_blc = noisy["video"], noisy["audio"]
    if video_bnhwc.shape[1:] != lay.video_latent_shape:
      raise ValueError(f"video latents {video_bnhwc.shape} != [B, {lay.video_latent_shape}]")
    if audio_blc.shape[1:] != lay.audio_latent_shape:
      raise ValueError(f"audio latents {audio_blc.shape} != [B, {lay.audio_latent_shape}]")
    if self.self_condition:
      if self_cond is None:  # first pass / self-conditioning dropped: a zero estimate
        self_cond = {"video": jnp.zeros_like(video_bnhwc), "audio": jnp.zeros_like(audio_blc)}
      video_bnhwc = jnp.concatenate([video_bnhwc, self_cond["video"].astype(video_bnhwc.dtype)], -1)
      audio_blc = jnp.concatenate([audio_blc, self_cond["audio"].astype(audio_blc.dtype)], -1)
    elif self_cond is not None:
      raise ValueError("self_cond was given but model.self_condition is False")

    d = self.width
    video_bld = self.video_in(patchify(video_bnhwc, self.patch_size))
    video_pos_nsd = (self.video_temporal_pos[...][:, None, :]
                     + self.video_spatial_pos[...][None, :, :])
    video_bld = video_bld + (video_pos_nsd.reshape(-1, d)
                             + self.modality_embed[...][VIDEO]).astype(self.dtype)
    audio_bld = self.audio_in(audio_blc)
    audio_bld = audio_bld + (self.audio_temporal_pos[...]
                             + self.modality_embed[...][AUDIO]).astype(self.dtype)
    return jnp.concatenate([video_bld, audio_bld], axis=1)

  def conditioning(self, timestep_vector_bmn: jax.Array) -> jax.Array:
    """Timesteps [B, M, N] -> conditioning rows [B, M·N, d] (row m·N + n), compute dtype."""
    lay = self.layout
    expected = (NUM_MODALITIES, lay.num_segments)
    if timestep_vector_bmn.shape[1:] != expected:
      raise ValueError(f"timestep vector {timestep_vector_bmn.shape} != [B, {expected}]")
    timesteps_br = timestep_vector_bmn.reshape(timestep_vector_bmn.shape[0], lay.num_rows)
    freq_brf = layers.timestep_embedding(timesteps_br, self.timestep_embed_dim)
    cond_brd = self.timestep_out(jax.nn.silu(self.timestep_in(freq_brf)))
    return cond_brd + self.row_embed[...].astype(self.dtype)

  def shared_modulation(self, cond_rows_brd: jax.Array):
    """(SiLU(cond rows) [B, R, d], the AdaLN-LoRA base shared by all blocks [B, R, 6d] | None)."""
    silu_cond_brd = jax.nn.silu(cond_rows_brd)
    # AdaLN-LoRA: the shared base is computed once for all blocks.
    base_brk = self.adaln_base(silu_cond_brd) if self.adaln_kind == "lora" else None
    return silu_cond_brd, base_brk

  def modulation_rows(self, cond_rows_brd: jax.Array) -> list[jax.Array]:
    """Per block, its six modulation vectors per row [B, R, 6d] (shift/scale/gate x attn/mlp)."""
    silu_cond_brd, base_brk = self.shared_modulation(cond_rows_brd)
    if self.scan_layers:
      rows_lbrk = nnx.vmap(lambda block: block.modulation_rows(silu_cond_brd, base_brk),
                           in_axes=0, out_axes=0)(self.blocks)
      return list(rows_lbrk)
    return [block.modulation_rows(silu_cond_brd, base_brk) for block in self.blocks]

  def __call__(self, noisy: dict[str, jax.Array], timestep_vector_bmn: jax.Array,
               self_cond: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    """Predicts ε (or v) for every element.

    Args:
      noisy: {"video": [B, N, h, w, d_v], "audio": [B, l_a, d_a]}.
      timestep_vector_bmn: [B, 2, N] timesteps in 0..T (float or int); row 0 video, 1 audio.
      self_cond: previous x̂0 estimate with the structure of `noisy`; None = zeros. Only when
        the model was built with self_condition.

    Returns:
      float32 {"video": [B, N, h, w, d_v], "audio": [B, l_a, d_a]}.
    """
    # The layout's numpy array, not `self.token_row`: under jit a jnp array is a tracer, and the
    # modulation gather needs the concrete rows to broadcast runs instead of gathering.
    token_row_l = self.layout.token_row
    # numpy tables (constants of the compiled program), not module state.
    rotary = (layers.time_rotary_tables(self.layout.token_seconds, self.head_dim,
                                        self.time_rope_fraction, self.time_rope_wavelengths)
              if self.time_rope else None)
    x_bld = layers.constrain(self.embed_tokens(noisy, self_cond), layers.ACTIVATIONS.tokens)
    cond_rows_brd = self.conditioning(timestep_vector_bmn)

    silu_cond_brd, base_brk = self.shared_modulation(cond_rows_brd)

    # Blocks run as pure functions of (x, block state) under jax.checkpoint / lax.scan rather
    # than nnx.remat / nnx.scan: Flax's transforms refuse modules merged in an outer trace, which
    # is what the samplers' lax.scan does with the whole model. token_row is closed over, not
    # passed: under remat an argument becomes a tracer. Each block's modulation rows are
    # computed inside its (rematerialized) step: they are tiny.
    blocks = self.blocks if self.scan_layers else list(self.blocks)
    block_graphdef = nnx.graphdef(blocks if self.scan_layers else blocks[0])

    def apply_block(x_bld, block_state):
      block = nnx.merge(block_graphdef, block_state)
      x_bld = block(x_bld, block.modulation_rows(silu_cond_brd, base_brk), token_row_l,
                    rotary, block.key_bias_rows(silu_cond_brd), self.layout.num_video_tokens,
                    block.cross_gate_rows(silu_cond_brd))
      return layers.constrain(x_bld, layers.ACTIVATIONS.tokens)

    if self.remat != "none":
      apply_block = jax.checkpoint(apply_block, policy=_REMAT_POLICIES[self.remat])
    if self.scan_layers:
      x_bld, _ = jax.lax.scan(lambda x, state: (apply_block(x, state), None), x_bld,
                              nnx.state(blocks))
    else:
      for index, block in enumerate(blocks):
        x_bld = apply_block(x_bld, nnx.state(block))
        if self.cross_modal_pool:
          x_bld = self.pools[index](x_bld)
        if self.clip_pool:
          x_bld = self.clip_pools[index](x_bld)

    video_blk, audio_blc = self.final(x_bld, jax.nn.silu(cond_rows_brd), token_row_l,
                                      self.layout.num_video_tokens)
    video_bnhwc = unpatchify(video_blk, self.patch_size, self.layout.video_latent_shape)
    return {"video": video_bnhwc.astype(jnp.float32), "audio": audio_blc.astype(jnp.float32)}


def build(model_config, layout: ClipLayout, seed: int) -> AVDiT:
  return AVDiT(model_config, layout, rngs=nnx.Rngs(seed))


def split_params(model: AVDiT):
  """(graphdef, params); AVDiT holds nothing but nnx.Param, which the train state carries."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree_util.tree_leaves(rest):
    raise ValueError("AVDiT has non-Param state; the train state would drop it")
  return graphdef, params


def abstract_params(model_config, layout: ClipLayout):
  """(graphdef, params of ShapeDtypeStructs) without allocating them (restoring, compiling)."""
  return split_params(nnx.eval_shape(lambda: build(model_config, layout, 0)))


def flops_per_example(model_config, layout: ClipLayout) -> dict[str, int]:
  """Analytic forward-pass matmul FLOPs (2·MACs) of one example, by term, plus "total".

  Elementwise work (norms, softmax, GELU, modulation arithmetic, gathers) is not counted. A
  training step is ≈ 3x forward (+1 forward for the self-conditioning estimate).
  """
  cfg = model_config
  d, depth, p = cfg.width, cfg.depth, cfg.patch_size
  hidden = int(cfg.mlp_ratio * d)
  num_tokens, rows = layout.num_tokens, layout.num_rows
  video_tokens, audio_tokens = layout.num_video_tokens, layout.audio_latents
  inputs_per_channel = 2 if cfg.self_condition else 1
  video_in = p * p * layout.video_channels
  if cfg.adaln == "full":
    block_modulation = depth * 2 * rows * d * 6 * d
  else:
    r = cfg.adaln_lora_rank
    block_modulation = 2 * rows * d * 6 * d + depth * 2 * rows * (d * r + r * 6 * d)
  flops = {
      # q, k, v and output projections: 4 d x d matmuls per token.
      "attention_projections": depth * 2 * num_tokens * 4 * d * d,
      # QK^T and AV: each 2·L²·d.
      "attention_core": depth * 4 * num_tokens**2 * d,
      "mlp": depth * 2 * num_tokens * 2 * d * hidden,
      # Per conditioning row, not per token: blocks (+ shared LoRA base) and the final layer.
      "modulation": block_modulation + 2 * rows * d * 2 * d,
      "input_projections": 2 * d * (video_tokens * video_in * inputs_per_channel
                                    + audio_tokens * layout.audio_channels * inputs_per_channel),
      "output_projections": 2 * d * (video_tokens * video_in + audio_tokens
                                     * layout.audio_channels),
      "timestep_mlp": 2 * rows * (cfg.timestep_embed_dim * d + d * d),
      # Two d x d projections of the segment means per block (model.cross_modal_pool).
      "cross_modal_pool": (depth * 2 * 2 * layout.num_segments * d * d
                           * (2 if cfg.get("cross_modal_pool_deviation", False) else 1)
                           if cfg.get("cross_modal_pool", False) else 0),
      # Two d x d projections of the clip means per block (model.clip_pool).
      "clip_pool": (depth * 2 * 2 * d * d * len(cfg.get("clip_pool_modalities", "video,audio")
                                                 .split(",")) // 2
                    if cfg.get("clip_pool", False) else 0),
  }
  flops["total"] = sum(flops.values())
  return flops


def train_flops_per_step(model_config, layout: ClipLayout, batch: int) -> int:
  """Analytic FLOPs of one train step: forward + backward (3x forward) per example, plus the
  self-conditioning forward pass when the model self-conditions."""
  passes = 3 + (1 if model_config.self_condition else 0)
  return flops_per_example(model_config, layout)["total"] * batch * passes
