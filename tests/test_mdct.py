"""The circular MDCT: checked against scipy's DCT-IV of the folded frame, exact inverse, Parseval,
and the property it is used for (a tone's energy sits at its frequency, whatever its phase)."""
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from avdit import layout as layout_lib
from avdit.models import latent_space
from avdit.models import mdct


def _dct4_of_folded_frame(waveform_l, frame, hop):
  """Independent path: window the 2·hop samples, fold to hop (TDAC), orthonormal DCT-IV."""
  wrapped = np.roll(waveform_l, hop // 2 - frame * hop)[:2 * hop]
  windowed = np.sin(np.pi * (np.arange(2 * hop) + 0.5) / (2 * hop)) * wrapped
  a, b, c, d = np.split(windowed, 4)
  folded = np.concatenate([-c[::-1] - d, a - b[::-1]])
  return scipy.fft.dct(folded, type=4, norm="ortho")


@pytest.mark.parametrize("hop", [8, 320])
def test_forward_matches_dct4_of_folded_frames(hop):
  waveform = np.random.default_rng(0).normal(size=(2, 5 * hop))
  coefficients = np.asarray(mdct.forward(jnp.asarray(waveform, jnp.float32), hop))
  assert coefficients.shape == (2, 5, hop)
  for frame in (0, 2, 4):  # the first and last frames wrap around
    np.testing.assert_allclose(coefficients[1, frame],
                               _dct4_of_folded_frame(waveform[1], frame, hop), atol=2e-5)


def test_inverse_is_exact_and_energy_is_kept():
  waveform = np.random.default_rng(1).uniform(-1, 1, size=(3, 7 * 64)).astype(np.float32)
  coefficients = mdct.forward(jnp.asarray(waveform), 64)
  np.testing.assert_allclose(np.asarray(mdct.inverse(coefficients)), waveform, atol=1e-5)
  np.testing.assert_allclose(np.sum(np.square(coefficients), axis=(1, 2)),
                             np.sum(np.square(waveform), axis=1), rtol=1e-5)


def test_tone_energy_sits_at_its_frequency_for_any_phase():
  hop, rate = 320, 16000
  t = np.arange(20 * hop) / rate
  for hz in (300.0, 700.0, 1400.0):
    for phase in (0.0, 1.0, 2.5):
      tone = np.sin(2 * np.pi * hz * t + phase)[None].astype(np.float32)
      energy = np.square(np.asarray(mdct.forward(jnp.asarray(tone), hop))[0, 5:15])
      bin_hz = (np.arange(hop) + 0.5) * rate / (2 * hop)  # 25 Hz apart
      peak_hz = bin_hz[np.argmax(energy, axis=1)]
      np.testing.assert_array_less(np.abs(peak_hz - hz), 25.0)
      near = np.abs(bin_hz - hz) < 60.0  # within ~2 bins: most of the energy
      assert np.all(energy[:, near].sum(1) > 0.9 * energy.sum(1))


def test_odd_or_partial_hops_are_clear_errors():
  with pytest.raises(ValueError, match="even hop"):
    mdct.mdct_basis(7)
  with pytest.raises(ValueError, match="not a multiple"):
    mdct.forward(jnp.zeros((1, 100)), 64)


def test_space_to_depth_with_mdct_audio_roundtrips():
  lay = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=16, width=16, sample_rate=16000,
                              video_channels=768, audio_channels=320)
  space = latent_space.SpaceToDepth(lay, audio_transform="mdct")
  rng = np.random.default_rng(2)
  video = rng.integers(0, 256, (2, 9, 16, 16, 3), dtype=np.uint8)
  audio = rng.uniform(-0.9, 0.9, (2, lay.audio_samples)).astype(np.float32)
  latents = space.encode(video, audio)
  assert latents["audio"].shape == (2, lay.audio_latents, 320)
  padded = np.pad(audio, ((0, 0), (0, lay.audio_latents * 320 - lay.audio_samples)))
  np.testing.assert_allclose(np.asarray(latents["audio"])[0, 3],
                             _dct4_of_folded_frame(padded[0], 3, 320), atol=2e-5)
  video_back, audio_back = space.decode(latents)
  np.testing.assert_array_equal(np.asarray(video_back), video)
  np.testing.assert_allclose(np.asarray(audio_back), audio, atol=1e-5)
  with pytest.raises(ValueError, match="audio_transform"):
    latent_space.SpaceToDepth(lay, audio_transform="stft")
